package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// owner returns the uid/gid a new backing entry should get: the caller's,
// as a local filesystem would do. gid is -1 (keep) when the parent
// directory is setgid, so BSD group inheritance still works. Without root
// the daemon cannot chown and everything belongs to the daemon user.
func owner(ctx context.Context, dfd int) (uid, gid int, ok bool) {
	if os.Geteuid() != 0 {
		return 0, 0, false
	}
	caller, cok := fuse.FromContext(ctx)
	if !cok {
		return 0, 0, false
	}
	uid, gid = int(caller.Uid), int(caller.Gid)
	var st unix.Stat_t
	if unix.Fstat(dfd, &st) == nil && st.Mode&unix.S_ISGID != 0 {
		gid = -1
	}
	return uid, gid, true
}

// fixNew gives a freshly created entry the caller's ownership and exactly
// the permission bits the kernel asked for: the kernel has already applied
// the caller's umask, so the daemon's own umask must not apply again.
func fixNew(ctx context.Context, dfd int, name string, mode uint32) error {
	if uid, gid, ok := owner(ctx, dfd); ok {
		if err := unix.Fchownat(dfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown new %q: %w", name, err)
		}
	}
	if mode&syscall.S_IFMT == syscall.S_IFLNK || inheritsDefaultACL(dfd) {
		return nil // acl.go
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat new %q: %w", name, err)
	}
	if st.Mode&07777 != mode&07777 {
		want := (st.Mode &^ 0777) | (mode & 0777) | (mode & 07000)
		if err := unix.Fchmodat(dfd, name, want&07777, 0); err != nil {
			return fmt.Errorf("chmod new %q: %w", name, err)
		}
	}
	return nil
}

// addChild registers a just-created backing entry as a child inode.
func (n *node) addChild(ctx context.Context, dfd int, name string, out *fuse.EntryOut) (*gofs.Inode, error) {
	var st unix.Statx_t
	if err := statx(dfd, name, &st); err != nil {
		return nil, fmt.Errorf("stat new %q: %w", name, err)
	}
	return n.newChild(ctx, dfd, name, &st, out), nil
}

var _ gofs.NodeMkdirer = (*node)(nil)

// Mkdir creates a directory. A subdirectory of a directory with an
// encryption policy inherits the policy, so everything a VM writes below
// its directory (snapshot folders, logs) is encrypted too.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	if _, err := n.createPolicy(dfd); err != nil {
		return nil, toErrno(err)
	}
	if err := unix.Mkdirat(dfd, name, mode); err != nil {
		return nil, toErrno(err)
	}
	ch, err := n.finishMkdir(ctx, dfd, name, mode, out)
	if err != nil {
		unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
		return nil, toErrno(err)
	}
	return ch, 0
}

func (n *node) finishMkdir(ctx context.Context, dfd int, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, error) {
	if err := fixNew(ctx, dfd, name, mode|syscall.S_IFDIR); err != nil {
		return nil, err
	}
	pol, err := n.createPolicy(dfd)
	if err != nil {
		return nil, err
	}
	if pol != nil {
		raw, err := pol.MarshalBinary()
		if err != nil {
			return nil, err
		}
		if err := unix.Setxattr(procPathAt(dfd, name), xattrPolicy, raw, 0); err != nil {
			return nil, fmt.Errorf("inherit policy to %q: %w", name, err)
		}
	}
	return n.addChild(ctx, dfd, name, out)
}

var _ gofs.NodeMknoder = (*node)(nil)

// Mknod creates fifos, sockets, devices, and regular files (encrypted when
// the directory has a policy, exactly like Create).
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	if mode&syscall.S_IFMT == syscall.S_IFREG {
		pol, err := n.createPolicy(dfd)
		if err != nil {
			return nil, toErrno(err)
		}
		if pol != nil {
			fd, _, err := n.r.createEncrypted(ctx, dfd, name, mode, pol)
			if err != nil {
				return nil, toErrno(err)
			}
			unix.Close(fd)
			ch, err := n.addChild(ctx, dfd, name, out)
			return ch, toErrno(err)
		}
	}
	if err := unix.Mknodat(dfd, name, mode, int(rdev)); err != nil {
		return nil, toErrno(err)
	}
	if err := fixNew(ctx, dfd, name, mode); err != nil {
		unix.Unlinkat(dfd, name, 0)
		return nil, toErrno(err)
	}
	ch, err := n.addChild(ctx, dfd, name, out)
	return ch, toErrno(err)
}

var _ gofs.NodeSymlinker = (*node)(nil)

// Symlink creates a symlink; its target is stored as given.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	if err := unix.Symlinkat(target, dfd, name); err != nil {
		return nil, toErrno(err)
	}
	if err := fixNew(ctx, dfd, name, syscall.S_IFLNK); err != nil {
		unix.Unlinkat(dfd, name, 0)
		return nil, toErrno(err)
	}
	ch, err := n.addChild(ctx, dfd, name, out)
	return ch, toErrno(err)
}

var _ gofs.NodeLinker = (*node)(nil)

// Link makes a hard link. The target keeps its header (or lack of one):
// the header, not the directory, decides whether a file is encrypted.
func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	tn, ok := asNode(target)
	if !ok {
		return nil, syscall.EXDEV
	}
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	tfd, err := tn.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	if err := n.checkLinkCrossing(tn, dfd); err != nil {
		return nil, toErrno(err)
	}
	if err := unix.Linkat(tfd, "", dfd, name, unix.AT_EMPTY_PATH); err != nil {
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EPERM) {
			return nil, toErrno(err)
		}
		// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link does not.
		if err := unix.Linkat(unix.AT_FDCWD, procPath(tfd), dfd, name, unix.AT_SYMLINK_FOLLOW); err != nil {
			return nil, toErrno(err)
		}
	}
	ch, err := n.addChild(ctx, dfd, name, out)
	return ch, toErrno(err)
}

var _ gofs.NodeRenamer = (*node)(nil)

// Rename is renameat2 between the two directory descriptors, flags
// (RENAME_NOREPLACE, RENAME_EXCHANGE) included.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := asNode(newParent)
	if !ok {
		return syscall.EXDEV
	}
	dfd, err := n.pathFd()
	if err != nil {
		return toErrno(err)
	}
	ndfd, err := np.pathFd()
	if err != nil {
		return toErrno(err)
	}
	if err := n.r.checkCrossing(n, np); err != nil {
		return toErrno(err)
	}
	np.keepVictim(newName)
	if err := unix.Renameat2(dfd, name, ndfd, newName, uint(flags)); err != nil {
		return toErrno(err)
	}
	n.r.recordRename(n, name, np, newName, flags)
	return 0
}

// recordRename moves the VM record along with a renamed directory (a VM
// directory, or one that holds VM directories).
func (r *Root) recordRename(from *node, name string, to *node, newName string, flags uint32) {
	oldRel, newRel := joinRel(from.relPath(), name), joinRel(to.relPath(), newName)
	if err := r.vms.Move(oldRel, newRel, flags&unix.RENAME_EXCHANGE != 0); err != nil {
		r.log.Error("cryptds: renamed directory not updated in the VM record", "from", oldRel, "to", newRel, "err", err)
	}
}

// joinRel joins a relative directory path (relPath form) and a name.
func joinRel(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// checkLinkCrossing refuses a hard link of tn into directory n (backing
// descriptor dfd) from another VM or between a VM and plain directories.
func (n *node) checkLinkCrossing(tn *node, dfd int) error {
	srcs, _, err := tn.placeVMs()
	if err != nil {
		return err
	}
	dst, err := n.r.placeOf(n, dfd)
	if err != nil {
		return err
	}
	if len(srcs) == 0 && (dst.encrypted() || tn.kindOf() == kindEncrypted) {
		return syscall.EXDEV
	}
	for _, src := range srcs {
		if src.domain() != dst.domain() {
			return syscall.EXDEV
		}
	}
	return nil
}

// keepVictim opens the O_PATH descriptor of child name, if the kernel
// knows that inode, before its name goes away (unlink, rmdir, rename over
// it). A node finds its backing file by name only until its descriptor is
// open, and an open file whose name was removed is still fstat'ed,
// truncated, allocated and chmod'ed through its node (stress-ng and many
// programs unlink a temporary file they keep using).
func (n *node) keepVictim(name string) {
	ch := n.GetChild(name)
	if ch == nil {
		return
	}
	if cn, ok := asNode(ch.Operations()); ok {
		_ = cn.pinPathFd() // a name already gone behind us has nothing to keep
	}
}

var _ gofs.NodeUnlinker = (*node)(nil)

// Unlink removes a non-directory.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	dfd, err := n.pathFd()
	if err != nil {
		return toErrno(err)
	}
	n.keepVictim(name)
	return toErrno(unix.Unlinkat(dfd, name, 0))
}

var _ gofs.NodeRmdirer = (*node)(nil)

// Rmdir removes an empty directory.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	dfd, err := n.pathFd()
	if err != nil {
		return toErrno(err)
	}
	n.keepVictim(name)
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil {
		return toErrno(err)
	}
	rel := joinRel(n.relPath(), name)
	if v, ok := n.r.vms.Lookup(rel); ok && v.Dir == rel {
		if err := n.r.vms.Remove(v.ID); err != nil {
			n.r.log.Error("cryptds: removed VM directory still in the VM record", "dir", rel, "err", err)
		} else {
			n.r.log.Info("cryptds: VM directory removed; forgotten by the VM record", "dir", rel, "vm", v.ID.String())
		}
	}
	return 0
}

var _ gofs.NodeOpendirHandler = (*node)(nil)

// OpendirHandle opens the backing directory for reading; the stream
// supports seekdir and fsyncdir.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	ds, errno := n.Readdir(ctx)
	return ds, 0, errno
}

var _ gofs.NodeReaddirer = (*node)(nil)

// Readdir lists the backing directory. Names are the backing names (the
// tree is mirrored 1:1); readdirplus attributes come from Lookup, which
// converts sizes of encrypted files.
func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, toErrno(err)
	}
	return gofs.NewLoopbackDirStreamFd(fd)
}
