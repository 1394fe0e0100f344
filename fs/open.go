package fs

import (
	"context"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

var _ gofs.NodeOpener = (*node)(nil)

// Open returns our own handle types only: a cryptFile for objects with a
// header, a plainFile otherwise. Neither offers a passthrough descriptor.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
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
	fd, err := unix.Open(procPath(pfd), backingFlags(flags)|int(flags&syscall.O_TRUNC)|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	return n.r.newPlainFile(n, fd, flags), openFlags(flags, false), 0
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
	fd, err := unix.Open(procPath(pfd), acc|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = unix.Open(procPath(pfd), acc|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, err
	}
	hdr, err := n.r.readHeader(fd, n.relPath())
	if err != nil {
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
	o, err := n.acquireObject(ctx, hdr)
	if err != nil {
		return nil, err
	}
	cf := &cryptFile{n: n, r: n.r, o: o, fd: fd, writable: flags&syscall.O_ACCMODE != syscall.O_RDONLY}
	if cf.writable {
		n.r.registerOpen(cf)
	}
	n.r.stats.openEnc.Add(1)
	return cf, nil
}
