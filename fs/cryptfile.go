package fs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

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
	dfdOnce  sync.Once
	dfd      int         // O_DIRECT descriptor for large reads and writes, or -1 (directread.go); use directFD
	dfdOff   atomic.Bool // the backing filesystem refused an aligned O_DIRECT request
	direct   bool        // opened with O_DIRECT: FUSE direct I/O, the mount's page cache bypassed
	writable bool
	fills    sync.WaitGroup // cache fills running on this handle's descriptor (fillaround.go)
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
	defer f.r.opDone(OpRead, f.r.opStart())
	f.o.mu.RLock()
	defer f.o.mu.RUnlock()
	if f.o.revoked.Load() {
		return nil, toErrno(f.r.errShredded(f.n.relPath(), f.o.kek))
	}
	if len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	if !f.direct {
		f.n.cache.served.mark(off, len(dest)) // pagecache.go
	}
	first, count := objcrypt.BlockRange(uint64(off), uint64(len(dest)))
	tok := f.o.blocks.lock(first, first+count, false)
	defer f.o.blocks.unlock(tok)
	n, err := f.readAt(dest, uint64(off))
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write encrypts the request, read-modify-writing only its edge blocks.
func (f *cryptFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	defer f.r.opDone(OpWrite, f.r.opStart())
	if !f.direct {
		return f.write(data, off)
	}
	n, errno := f.write(data, off)
	f.n.dropAfterDirectWrite(off, len(data)) // a failed write may have changed part of the range
	return n, errno
}

func (f *cryptFile) write(data []byte, off int64) (uint32, syscall.Errno) {
	if errno := checkPlainEnd(uint64(off), uint64(len(data))); errno != 0 {
		return 0, errno
	}
	if handled, trim, err := f.writeWholeBlocks(data, uint64(off)); handled {
		if trim != nil {
			f.o.mu.Lock()
			f.trimPartialTail(trim)
			f.o.mu.Unlock()
		}
		if err != nil {
			return 0, toErrno(err)
		}
		return uint32(len(data)), 0
	}
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	if f.o.revoked.Load() {
		return 0, toErrno(f.r.errShredded(f.n.relPath(), f.o.kek))
	}
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
	defer f.r.opDone(OpFsync, f.r.opStart())
	if flags&1 != 0 {
		return toErrno(unix.Fdatasync(f.fd))
	}
	return toErrno(unix.Fsync(f.fd))
}

// Release closes the backing descriptor and drops the object reference.
func (f *cryptFile) Release(ctx context.Context) syscall.Errno {
	f.fills.Wait()
	f.n.cacheReleased(f.fd, f.writable, f.direct)
	if f.writable {
		f.r.unregisterOpen(f)
	}
	f.r.stats.openEnc.Add(-1)
	f.n.releaseObject(f.o)
	f.dfdOnce.Do(func() {}) // no request runs any more; keep one from opening it now
	if f.dfd >= 0 {
		unix.Close(f.dfd)
	}
	return toErrno(unix.Close(f.fd))
}

// truncate sets the plaintext size.
func (f *cryptFile) truncate(size uint64) error {
	if errno := checkPlainEnd(size, 0); errno != 0 {
		return errno
	}
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	if f.o.revoked.Load() {
		return f.r.errShredded(f.n.relPath(), f.o.kek)
	}
	return f.truncateLocked(size)
}

// checkPlainEnd refuses, with EFBIG as a local filesystem does, a range
// ending past the largest object whose backing offsets fit an off_t (the
// backing pwrite would fail with EINVAL instead).
func checkPlainEnd(off, n uint64) syscall.Errno {
	if off > objcrypt.MaxPlainSize || n > objcrypt.MaxPlainSize-off {
		return syscall.EFBIG
	}
	return 0
}

// Allocate supports every mode the kernel passes to a FUSE daemon: mode 0
// (reserve and extend), KEEP_SIZE (reserve), PUNCH_HOLE|KEEP_SIZE (QEMU
// discard) and ZERO_RANGE with or without KEEP_SIZE (QEMU write-zeroes,
// fallocate -z). COLLAPSE_RANGE, INSERT_RANGE and UNSHARE_RANGE never get
// here: the kernel refuses them on every FUSE mount.
func (f *cryptFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	f.o.mu.Lock()
	defer f.o.mu.Unlock()
	if f.o.revoked.Load() {
		return toErrno(f.r.errShredded(f.n.relPath(), f.o.kek))
	}
	var err error
	switch mode {
	case 0, unix.FALLOC_FL_KEEP_SIZE:
		err = f.reserveLocked(off, size, mode == 0)
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		err = f.punchLocked(off, size)
	case unix.FALLOC_FL_ZERO_RANGE, unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE:
		err = f.zeroLocked(off, size, mode&unix.FALLOC_FL_KEEP_SIZE == 0)
	default:
		err = fmt.Errorf("fallocate mode %#x on an encrypted file: %w", mode, syscall.EOPNOTSUPP)
	}
	return toErrno(err)
}

// Lseek maps SEEK_DATA/SEEK_HOLE through the backing file, at block
// precision: a plaintext block is data when its stored range holds a
// stored block, that is when it lies in a backing data extent and, for a
// block that only partly does (stored blocks are not page aligned, so the
// block next to data shares a backing page with it), when its stored bytes
// are not all zero (all-zero stored blocks read as zeros: holes). Unwritten
// extents are holes, as on ext4; the backing filesystem counts its own
// dirty pages over them as data. Both answers follow the same rule, so a
// caller alternating SEEK_DATA and SEEK_HOLE always advances.
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
	for blk := objcrypt.BlockOfPlainOffset(off); ; {
		if objcrypt.CipherOffsetOfBlock(blk) >= csize {
			if whence == unix.SEEK_DATA {
				return 0, syscall.ENXIO
			}
			return psize, 0
		}
		s, err := f.blockState(blk, csize)
		if err != nil {
			return 0, toErrno(err)
		}
		if s.data == (whence == unix.SEEK_DATA) {
			return min(max(objcrypt.PlainOffsetOfBlock(blk), off), psize), 0
		}
		blk = max(s.next, blk+1)
	}
}

// blockStateOf is what Lseek learns about one block: whether it holds data,
// and the next block whose answer may differ.
type blockStateOf struct {
	data bool
	next uint64
}

// blockState tells whether block blk holds a stored block, asking the
// backing filesystem for its extents: a block wholly in written extents
// (FIEMAP; where there is none, in SEEK_DATA's data) is data, one wholly in
// holes is a hole, and any other is read.
func (f *cryptFile) blockState(blk, csize uint64) (blockStateOf, error) {
	c := objcrypt.CipherOffsetOfBlock(blk)
	end := min(c+objcrypt.CipherBlockSize, csize)
	blockOf := func(cipherOff uint64) uint64 {
		return (cipherOff - objcrypt.HeaderRegionSize) / objcrypt.CipherBlockSize
	}
	d, ok, err := f.backingSeek(c, unix.SEEK_DATA, csize)
	if err != nil {
		return blockStateOf{}, err
	}
	if !ok {
		return blockStateOf{next: blockOf(csize) + 1}, nil // no data up to the end
	}
	if d >= end {
		return blockStateOf{next: blockOf(d)}, nil
	}
	if w, ok := writtenFrom(f.fd, c); ok {
		if w >= end {
			return blockStateOf{data: true, next: blockOf(w)}, nil
		}
	} else {
		h, ok, err := f.backingSeek(d, unix.SEEK_HOLE, csize)
		if err != nil {
			return blockStateOf{}, err
		}
		if !ok {
			h = csize
		}
		if d == c && h >= end {
			return blockStateOf{data: true, next: blockOf(h)}, nil
		}
	}
	zero, err := f.storedZero(c, end)
	if err != nil {
		return blockStateOf{}, err
	}
	return blockStateOf{data: !zero, next: blk + 1}, nil
}

// storedZero reports whether the backing range [off, end) is all zeros.
// It reads through the O_DIRECT descriptor where there is one: a buffered
// read of an unwritten extent would leave up-to-date zero pages in the
// backing page cache, which the backing filesystem's SEEK_DATA then counts
// as data, so each answer would spread data over the next block.
func (f *cryptFile) storedZero(off, end uint64) (bool, error) {
	var b []byte
	if dfd := f.directFD(); dfd >= 0 {
		start := off &^ (directAlign - 1)
		stop := (end + directAlign - 1) &^ (directAlign - 1)
		pb := alignedPool.Get().(*[]byte)
		defer alignedPool.Put(pb)
		skip := int(-uintptr(unsafe.Pointer(&(*pb)[0])) & (directAlign - 1))
		buf := (*pb)[skip : skip+int(stop-start)]
		got, err := preadAligned(f.r.pread, dfd, buf, int64(start), directAlign)
		switch {
		case err == nil:
			b = buf[off-start : max(min(start+uint64(got), end), off)-start]
		case !f.directRefused(err, got):
			return false, fmt.Errorf("read stored block at %d: %w", off, err)
		}
	}
	if b == nil {
		b = make([]byte, end-off)
		n, err := preadFull(f.fd, b, int64(off))
		if err != nil {
			return false, fmt.Errorf("read stored block at %d: %w", off, err)
		}
		b = b[:n]
	}
	for _, c := range b {
		if c != 0 {
			return false, nil
		}
	}
	return true, nil
}

// backingSeek is lseek(2) on the backing file; ok is false when there is
// no such offset before csize (ENXIO or an answer at or past the end).
func (f *cryptFile) backingSeek(from uint64, whence int, csize uint64) (uint64, bool, error) {
	res, err := unix.Seek(f.fd, int64(from), whence)
	if errors.Is(err, unix.ENXIO) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("lseek backing: %w", err)
	}
	if uint64(res) >= csize {
		return 0, false, nil
	}
	return uint64(res), true, nil
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
