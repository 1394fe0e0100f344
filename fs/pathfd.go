package fs

import (
	"container/list"
	"fmt"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// pathFD is a node's O_PATH descriptor on its backing inode. Every backing
// operation is relative to such descriptors (openat, fstatat, mkdirat, ...)
// or goes through /proc/self/fd/N, so no joined path is ever longer than a
// single name: trees deeper than PATH_MAX work, and a rename elsewhere in
// the tree cannot redirect an operation to another file.
//
// It lives outside the node so a runtime cleanup can close it when go-fuse
// discards a node that lost a lookup race (such nodes never see OnForget).
type pathFD struct {
	mu   sync.Mutex
	fd   int // -1: not open (yet, or any more)
	root bool
	// pinned descriptors are the only way back to their file (unlinked
	// while the kernel still knows it, O_TMPFILE), so the limit never asks
	// the kernel to drop them.
	pinned bool
	lim    *pathFDLimit
	elem   *list.Element // in lim.open; guarded by lim.mu
}

func newPathFD(lim *pathFDLimit) *pathFD { return &pathFD{fd: -1, lim: lim} }

func (p *pathFD) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd >= 0 && !p.root {
		unix.Close(p.fd)
		p.fd = -1
		p.lim.removed(p)
	}
}

// procPath names an open descriptor as a path short enough for any
// path-taking syscall (xattrs, utimensat, chmod, reopen with new flags).
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// procPathAt names child name of the directory open at dirfd.
func procPathAt(dirfd int, name string) string { return procPath(dirfd) + "/" + name }

// pathFd returns the node's O_PATH descriptor, opening it from the parent's
// on first use and checking it is still the same backing inode. The result
// stays owned by the node.
func (n *node) pathFd() (int, error) {
	p := n.pfd
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd >= 0 {
		return p.fd, nil
	}
	name, parent := n.Parent()
	if parent == nil {
		return -1, fmt.Errorf("node has no parent (deleted): %w", syscall.ENOENT)
	}
	pn, ok := parent.Operations().(interface{ cnode() *node })
	if !ok {
		return -1, fmt.Errorf("parent is not a cryptds node: %w", syscall.EIO)
	}
	pfd, err := pn.cnode().pathFd()
	if err != nil {
		return -1, err
	}
	fd, err := unix.Openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("openat %q: %w", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("fstat %q: %w", name, err)
	}
	if want := n.StableAttr().Ino; n.r.stableIno(st.Dev, st.Ino) != want {
		unix.Close(fd)
		return -1, fmt.Errorf("%q was replaced on the backing store: %w", name, syscall.ENOENT)
	}
	p.fd = fd
	if !p.pinned && n.StableAttr().Mode != syscall.S_IFDIR {
		p.lim.added(n)
	}
	return fd, nil
}

// pinPathFd opens the node's descriptor if it is not open yet and keeps it
// for as long as the node lives (see pathFD.pinned).
func (n *node) pinPathFd() error {
	if _, err := n.pathFd(); err != nil {
		return err
	}
	p := n.pfd
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pinned = true
	p.lim.removed(p)
	return nil
}

// stableIno is stableAttr's inode number for a Stat_t.
func (r *Root) stableIno(dev, ino uint64) uint64 {
	swapped := (dev << 32) | (dev >> 32)
	rootSwapped := (r.rootDev << 32) | (r.rootDev >> 32)
	return (swapped ^ rootSwapped) ^ ino
}
