package fs

import (
	"context"
	"fmt"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ gofs.NodeSetattrer = (*node)(nil)

// Setattr applies chmod, chown, truncate and utimens through the node's
// descriptor. Truncate of an encrypted file goes through the object so the
// new last block is re-encrypted; the size is applied before the times so
// an explicit mtime is not clobbered by the truncate.
func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if err := n.setattr(ctx, f, in); err != nil {
		return toErrno(err)
	}
	return n.Getattr(ctx, f, out)
}

func (n *node) setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn) error {
	fd, err := n.pathFd()
	if err != nil {
		return err
	}
	isLink := n.StableAttr().Mode == syscall.S_IFLNK
	if mode, ok := in.GetMode(); ok {
		if isLink {
			return fmt.Errorf("chmod of a symlink: %w", syscall.EOPNOTSUPP)
		}
		if err := unix.Chmod(procPath(fd), mode&07777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		su, sg := -1, -1
		if uok {
			su = int(uid)
		}
		if gok {
			sg = int(gid)
		}
		if err := unix.Fchownat(fd, "", su, sg, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if size, ok := in.GetSize(); ok {
		if err := n.truncate(ctx, f, size); err != nil {
			return err
		}
	}
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_MTIME) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if in.Valid&fuse.FATTR_ATIME != 0 {
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
			if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
				ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if in.Valid&fuse.FATTR_MTIME != 0 {
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
			if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
				ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, procPath(fd), ts, 0); err != nil {
			return fmt.Errorf("utimens: %w", err)
		}
	}
	return nil
}

// truncate sets the (plaintext) size of a regular file.
func (n *node) truncate(ctx context.Context, f gofs.FileHandle, size uint64) error {
	if n.StableAttr().Mode != syscall.S_IFREG {
		return fmt.Errorf("truncate of a non-regular file: %w", syscall.EINVAL)
	}
	if n.kindOf() == kindEncrypted {
		if cf, ok := f.(*cryptFile); ok {
			return cf.truncate(size)
		}
		cf, err := n.openCrypt(ctx, syscall.O_RDWR)
		if err != nil {
			return err
		}
		defer cf.Release(ctx)
		return cf.truncate(size)
	}
	if pf, ok := f.(*plainFile); ok {
		if err := unix.Ftruncate(pf.fd, int64(size)); err != nil {
			return fmt.Errorf("ftruncate: %w", err)
		}
		return nil
	}
	fd, err := n.pathFd()
	if err != nil {
		return err
	}
	if err := unix.Truncate(procPath(fd), int64(size)); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}
