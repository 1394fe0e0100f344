package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// cryptFile is the handle of an encrypted file. It holds its own backing
// descriptor and shares the node's objState (AEAD and block lock) with the
// other handles of the inode.
type cryptFile struct {
	n        *node
	r        *Root
	o        *objState
	fd       int
	writable bool
}

var (
	_ gofs.FileReader    = (*cryptFile)(nil)
	_ gofs.FileWriter    = (*cryptFile)(nil)
	_ gofs.FileFsyncer   = (*cryptFile)(nil)
	_ gofs.FileFlusher   = (*cryptFile)(nil)
	_ gofs.FileReleaser  = (*cryptFile)(nil)
	_ gofs.FileLseeker   = (*cryptFile)(nil)
	_ gofs.FileAllocater = (*cryptFile)(nil)
)

func (f *cryptFile) handleNode() *node { return f.n }

// Read decrypts the blocks covering the request. A block that fails
// authentication fails this read only (EIO), with one log line.
func (f *cryptFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.o.mu.RLock()
	defer f.o.mu.RUnlock()
	n, err := f.readAt(dest, uint64(off))
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write encrypts the request, read-modify-writing only its edge blocks.
func (f *cryptFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	if err := f.writeAt(data, uint64(off)); err != nil {
		return 0, toErrno(err)
	}
	return uint32(len(data)), 0
}

// Flush has nothing to do: no data is buffered in the daemon.
func (f *cryptFile) Flush(ctx context.Context) syscall.Errno { return 0 }

// Fsync is fsync, or fdatasync when the kernel says so (the size lives in
// the backing size, which fdatasync persists).
func (f *cryptFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if flags&1 != 0 {
		return toErrno(unix.Fdatasync(f.fd))
	}
	return toErrno(unix.Fsync(f.fd))
}

// Release closes the backing descriptor and drops the object reference.
func (f *cryptFile) Release(ctx context.Context) syscall.Errno {
	if f.writable {
		f.r.unregisterOpen(f)
	}
	f.r.stats.openEnc.Add(-1)
	f.n.releaseObject(f.o)
	return toErrno(unix.Close(f.fd))
}

// truncate sets the plaintext size.
func (f *cryptFile) truncate(size uint64) error {
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	return f.truncateLocked(size)
}

// Allocate supports what QEMU and fio use: mode 0 (reserve and extend),
// KEEP_SIZE (reserve) and PUNCH_HOLE|KEEP_SIZE (discard). ZERO_RANGE,
// COLLAPSE_RANGE and INSERT_RANGE are EOPNOTSUPP, like on many local
// filesystems, so callers fall back to writing zeros.
func (f *cryptFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	var err error
	switch mode {
	case 0, unix.FALLOC_FL_KEEP_SIZE:
		err = f.reserveLocked(off, size, mode == 0)
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		err = f.punchLocked(off, size)
	default:
		err = fmt.Errorf("fallocate mode %#x on an encrypted file: %w", mode, syscall.EOPNOTSUPP)
	}
	return toErrno(err)
}

// Lseek maps SEEK_DATA/SEEK_HOLE through the backing file: a backing data
// or hole offset is converted to the plaintext block containing it. A
// stored block only partly inside a backing hole counts as data, which
// lseek(2) allows (holes may be reported as data).
func (f *cryptFile) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	f.o.mu.RLock()
	defer f.o.mu.RUnlock()
	csize, psize, err := f.sizes(false)
	if err != nil {
		return 0, toErrno(err)
	}
	switch whence {
	case unix.SEEK_DATA, unix.SEEK_HOLE:
	case unix.SEEK_END:
		return psize + off, 0
	default:
		return off, 0
	}
	if off >= psize {
		return 0, syscall.ENXIO
	}
	blk := objcrypt.BlockOfPlainOffset(off)
	coff := objcrypt.CipherOffsetOfBlock(blk)
	res, err := unix.Seek(f.fd, int64(coff), int(whence))
	if err != nil {
		if errors.Is(err, unix.ENXIO) && whence == unix.SEEK_HOLE {
			return psize, 0
		}
		return 0, toErrno(err)
	}
	cres := uint64(res)
	if cres >= csize {
		if whence == unix.SEEK_HOLE {
			return psize, 0
		}
		return 0, syscall.ENXIO
	}
	body := cres - objcrypt.HeaderRegionSize
	if whence == unix.SEEK_DATA {
		p := body / objcrypt.CipherBlockSize * objcrypt.PlainBlockSize
		return max(p, off), 0
	}
	p := (body + objcrypt.CipherBlockSize - 1) / objcrypt.CipherBlockSize * objcrypt.PlainBlockSize
	return min(max(p, off), psize), 0
}

// sizes returns the backing and plaintext sizes. strict refuses a backing
// size that is not a valid object size (writes must not build on it);
// otherwise the readable prefix is used.
func (f *cryptFile) sizes(strict bool) (csize, psize uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return 0, 0, fmt.Errorf("fstat: %w", err)
	}
	csize = uint64(st.Size)
	if csize == 0 {
		return 0, 0, nil
	}
	if strict {
		psize, err = objcrypt.PlainSizeFromCipher(csize)
		if err != nil {
			f.r.log.Error("cryptds: corrupt object size", "file", f.n.relPath(), "err", err)
			return 0, 0, fmt.Errorf("%s: %w", f.n.relPath(), err)
		}
		return csize, psize, nil
	}
	return csize, plainSizeLenient(csize), nil
}
