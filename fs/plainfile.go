package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// plainFile is the handle of a plain (unencrypted) file: every call is the
// same syscall on the backing descriptor. It is deliberately not a
// go-fuse LoopbackFile: that type offers its descriptor for kernel FUSE
// passthrough, and nothing in cryptds may ever be passthrough.
type plainFile struct {
	n        *node
	fd       int
	direct   bool // opened with O_DIRECT: FUSE direct I/O, the mount's page cache bypassed
	writable bool
}

var (
	_ gofs.FileReader    = (*plainFile)(nil)
	_ gofs.FileWriter    = (*plainFile)(nil)
	_ gofs.FileFsyncer   = (*plainFile)(nil)
	_ gofs.FileFlusher   = (*plainFile)(nil)
	_ gofs.FileReleaser  = (*plainFile)(nil)
	_ gofs.FileGetattrer = (*plainFile)(nil)
	_ gofs.FileLseeker   = (*plainFile)(nil)
	_ gofs.FileAllocater = (*plainFile)(nil)
)

func (r *Root) newPlainFile(n *node, fd int, flags uint32) *plainFile {
	f := &plainFile{n: n, fd: fd, direct: flags&syscall.O_DIRECT != 0,
		writable: flags&syscall.O_ACCMODE != syscall.O_RDONLY}
	n.cacheOpened(fd, f.writable, f.direct)
	if f.writable {
		r.registerOpen(f)
	}
	return f
}

func (f *plainFile) handleNode() *node { return f.n }

// Read is pread on the backing file.
func (f *plainFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer f.n.r.opDone(OpRead, f.n.r.opStart())
	if !f.direct {
		f.n.cache.served.mark(off, len(dest))
	}
	n, err := preadFull(f.fd, dest, off)
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write is pwrite on the backing file.
func (f *plainFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	defer f.n.r.opDone(OpWrite, f.n.r.opStart())
	if f.direct {
		defer f.n.dropAfterDirectWrite(off, len(data)) // a failed write may have changed part of the range
	}
	if err := pwriteFull(f.fd, data, off); err != nil {
		return 0, toErrno(err)
	}
	return uint32(len(data)), 0
}

// Flush has nothing to do: no data is buffered in the daemon.
func (f *plainFile) Flush(ctx context.Context) syscall.Errno { return 0 }

// Fsync is fsync, or fdatasync when the kernel says so.
func (f *plainFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	defer f.n.r.opDone(OpFsync, f.n.r.opStart())
	if flags&1 != 0 {
		return toErrno(unix.Fdatasync(f.fd))
	}
	return toErrno(unix.Fsync(f.fd))
}

// Release closes the backing descriptor.
func (f *plainFile) Release(ctx context.Context) syscall.Errno {
	f.n.cacheReleased(f.fd, f.writable, f.direct)
	if f.writable {
		f.n.r.unregisterOpen(f)
	}
	return toErrno(unix.Close(f.fd))
}

// Getattr is fstat of the backing file.
func (f *plainFile) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	defer f.n.r.opDone(OpGetattr, f.n.r.opStart())
	var st unix.Statx_t
	if err := statx(f.fd, "", &st); err != nil {
		return toErrno(err)
	}
	f.n.r.fillAttr(&out.Attr, &st, kindPlain)
	return 0
}

// Lseek serves SEEK_DATA and SEEK_HOLE from the backing file.
func (f *plainFile) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(f.fd, int64(off), int(whence))
	return uint64(n), toErrno(err)
}

// Allocate is fallocate on the backing file, every mode included.
func (f *plainFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return toErrno(unix.Fallocate(f.fd, mode, int64(off), int64(size)))
}
