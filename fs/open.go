package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

var _ gofs.NodeOpener = (*node)(nil)

// Open returns our own handle types only: a cryptFile for objects with a
// header, a plainFile otherwise. Neither offers a passthrough descriptor.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	defer n.r.opDone(OpOpen, n.r.opStart())
	if n.kindOf() == kindEncrypted {
		cf, err := n.openCrypt(ctx, flags)
		if err != nil {
			return nil, 0, toErrno(err)
		}
		if flags&syscall.O_TRUNC != 0 {
			if err := cf.truncate(0); err != nil {
				cf.Release(ctx)
				return nil, 0, toErrno(err)
			}
		}
		return cf, openFlags(flags, true), 0
	}
	pfd, err := n.pathFd()
	if err != nil {
		return nil, 0, toErrno(err)
	}
	// The stripped-header check first: its log line names the repair.
	if err := n.refuseStrippedHeader(pfd); err != nil {
		return nil, 0, toErrno(err)
	}
	if err := n.checkPlainPlace(); err != nil {
		return nil, 0, toErrno(err)
	}
	fd, err := unix.Open(procPath(pfd), backingFlags(flags)|int(flags&syscall.O_TRUNC)|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	return n.r.newPlainFile(n, fd, flags), openFlags(flags, false), 0
}

// errStrippedHeader marks a backing file that starts with a valid cryptds
// header region but has no header xattr.
var errStrippedHeader = errors.New("encrypted object without its header xattr")

// refuseStrippedHeader refuses to serve as plain a file whose backing copy
// starts with a valid in-file header but lacks the header xattr. Someone
// with write access to the backing store could otherwise strip the xattr
// and have the VM's next writes land there in plaintext (or an xattr-less
// copy would be served as garbage). It runs before any O_TRUNC takes
// effect; fsck --restore-xattrs is the way back.
func (n *node) refuseStrippedHeader(pfd int) error {
	fd, err := openNoAtime(pfd, unix.O_RDONLY)
	if err != nil {
		return nil // write-only access: the open itself decides
	}
	defer unix.Close(fd)
	region := make([]byte, objcrypt.HeaderRegionSize)
	got, err := preadFull(fd, region, 0)
	if err != nil || got < len(region) {
		return nil
	}
	if _, err := objcrypt.ParseRegion(region); err != nil {
		return nil
	}
	n.r.stats.hdrErr.Add(1)
	n.r.log.Error("cryptds: refusing to serve an encrypted object as plain: its header xattr is missing (restore it with cryptds fsck --restore-xattrs)",
		"file", n.relPath())
	return fmt.Errorf("%s: %w: %w", n.relPath(), errStrippedHeader, syscall.EIO)
}

// openCrypt opens the backing file of an encrypted node (read-write unless
// the caller only reads: partial-block writes need read-modify-write) and
// attaches it to the node's object.
func (n *node) openCrypt(ctx context.Context, flags uint32) (*cryptFile, error) {
	pfd, err := n.pathFd()
	if err != nil {
		return nil, err
	}
	acc := unix.O_RDWR
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		acc = unix.O_RDONLY
	}
	// O_NOATIME: the daemon's own reads (header region, edge blocks of
	// writes) must not show as accesses; the cost is that reads through
	// the mount do not update atime of encrypted files either (as noatime).
	fd, err := openNoAtime(pfd, acc)
	if err != nil {
		return nil, err
	}
	hdr, err := n.r.readHeader(ctx, fd, n.relPath())
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := n.checkEncryptedPlace(hdr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	cf, err := n.newCryptFile(ctx, fd, hdr, flags)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return cf, nil
}

// newCryptFile wraps an open backing descriptor whose header was checked.
func (n *node) newCryptFile(ctx context.Context, fd int, hdr *objcrypt.Header, flags uint32) (*cryptFile, error) {
	o, err := n.acquireObject(ctx, fd, hdr)
	if err != nil {
		return nil, err
	}
	cf := &cryptFile{n: n, r: n.r, o: o, fd: fd, dfd: -1, direct: flags&syscall.O_DIRECT != 0,
		writable: flags&syscall.O_ACCMODE != syscall.O_RDONLY}
	n.cacheOpened(fd, cf.writable, cf.direct)
	if cf.writable {
		n.r.registerOpen(cf)
	}
	n.r.stats.openEnc.Add(1)
	return cf, nil
}

// openNoAtime reopens the backing inode of descriptor fd with flags (and
// O_CLOEXEC), O_NOATIME when the daemon may (it may not on a file it
// neither owns nor has CAP_FOWNER for: EPERM, then without).
func openNoAtime(fd, flags int) (int, error) {
	nfd, err := unix.Open(procPath(fd), flags|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		nfd, err = unix.Open(procPath(fd), flags|unix.O_CLOEXEC, 0)
	}
	return nfd, err
}
