package fs

import (
	"errors"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Large reads and writes bypass the backing page cache.
//
// Stored blocks are 4128 bytes and not sector aligned, so a handle's own
// backing descriptor is buffered; reading a cold megabyte through it costs
// a page-cache fill and a copy, and left direct sequential reads at about
// half of a plain loopback that passes O_DIRECT through. For reads of
// directReadMin or more, the stored range is widened to directAlign and
// read with a second, O_DIRECT descriptor into an aligned buffer, unless
// the page cache already holds the whole range (recent buffered writes,
// other readers). Smaller reads stay buffered: random 4 KiB reads of a VM
// disk hit cached ciphertext far more often than a disk is faster.
//
// This holds for buffered handles too (backup tools and QEMU
// cache=writeback reading a disk): their plaintext is cached in the
// mount's page cache, so caching the ciphertext a second time in the
// backing page cache only costs memory and a copy, and with the mount's
// 8 MiB read-ahead (mount.go) eight 1 MiB reads reach the disk at once
// instead of one stream behind the backing device's read-ahead. Cold
// 512 MiB buffered sequential reads: 0.8-1.1 -> 1.37-1.42 GB/s over six
// alternating rounds (docs/BENCHMARKS.md).
const (
	directReadMin = 128 << 10
	directAlign   = 4096 // offset and memory alignment O_DIRECT needs on every common block device
)

// alignedPool holds buffers for directly read ciphertext: one max_write
// request, its two edge blocks and the widening to directAlign on both
// ends, plus slack for aligning the start.
var alignedPool = sync.Pool{New: func() any {
	b := make([]byte, largeBuf+3*directAlign)
	return &b
}}

// directFD is the handle's O_DIRECT descriptor, opened at its first large
// request: most handles (configs, NVRAM, logs, 4 KiB VM I/O) never make
// one, and an open is a syscall more per open. It is -1 once the backing
// filesystem has refused a request as misaligned (directRefused).
func (f *cryptFile) directFD() int {
	f.dfdOnce.Do(func() { f.dfd = openDirect(f.fd, f.writable) })
	if f.dfdOff.Load() {
		return -1
	}
	return f.dfd
}

// directRefused reports whether err is the backing filesystem refusing an
// O_DIRECT request that moved no bytes (EINVAL: it wants a larger
// alignment than directAlign, as some network and stacked filesystems
// do), and if so turns the handle's direct path off, so the caller can
// repeat the request through the buffered descriptor and later requests
// do not try again.
func (f *cryptFile) directRefused(err error, moved int) bool {
	if moved != 0 || !errors.Is(err, unix.EINVAL) {
		return false
	}
	if !f.dfdOff.Swap(true) {
		f.r.log.Warn("cryptds: the backing filesystem refuses 4 KiB-aligned O_DIRECT; large requests of this handle go through the page cache", "file", f.n.relPath(), "err", err)
	}
	return true
}

// openDirect opens a second, O_DIRECT descriptor on the backing file of fd,
// read-write for writable handles (-1 when the backing filesystem refuses
// O_DIRECT: tmpfs, some FUSE).
func openDirect(fd int, writable bool) int {
	acc := unix.O_RDONLY
	if writable {
		acc = unix.O_RDWR
	}
	dfd, err := openNoAtime(fd, acc|unix.O_DIRECT)
	if err != nil {
		return -1
	}
	return dfd
}

// storedRange reads the stored bytes [off, end) of the object: through the
// handle's descriptor, or for large reads, from the page cache if it holds
// all of them and from the disk directly otherwise. It returns the bytes
// (short at end of file) and a function that gives the buffer back.
func (f *cryptFile) storedRange(off, end uint64) ([]byte, func(), error) {
	if end-off < directReadMin || end-off > largeBuf || f.directFD() < 0 {
		return f.storedRangeBuffered(off, end)
	}
	start := off &^ (directAlign - 1)
	stop := (end + directAlign - 1) &^ (directAlign - 1)
	if f.cached(start, stop) {
		return f.storedRangeBuffered(off, end)
	}
	pb := alignedPool.Get().(*[]byte)
	release := func() { alignedPool.Put(pb) }
	skip := int(-uintptr(unsafe.Pointer(&(*pb)[0])) & (directAlign - 1))
	buf := (*pb)[skip : skip+int(stop-start)]
	got, err := preadAligned(f.r.pread, f.dfd, buf, int64(start), directAlign)
	if err != nil {
		release()
		if f.directRefused(err, got) {
			return f.storedRangeBuffered(off, end)
		}
		return nil, nil, err
	}
	f.r.stats.directRead.Add(uint64(got))
	have := max(min(start+uint64(got), end), off)
	return buf[off-start : have-start], release, nil
}

// cached reports whether the page cache holds every page of the backing
// range [start, stop) (then a buffered read is a copy, not a disk read).
// cachestat(2) asks without starting I/O; an RWF_NOWAIT read would start
// read-ahead of what it misses and read the range twice. Before Linux 6.5
// the answer is no.
func (f *cryptFile) cached(start, stop uint64) bool {
	var cs unix.Cachestat_t
	r := unix.CachestatRange{Off: start, Len: stop - start}
	if err := unix.Cachestat(uint(f.fd), &r, &cs, 0); err != nil {
		return false
	}
	return cs.Cache == (stop-start)/uint64(os.Getpagesize())
}

// storedRangeBuffered is storedRange through the handle's descriptor.
func (f *cryptFile) storedRangeBuffered(off, end uint64) ([]byte, func(), error) {
	cb := f.r.bufs.getCipher(int(end - off))
	n, err := preadFull(f.fd, *cb, int64(off))
	if err != nil {
		f.r.bufs.putCipher(cb)
		return nil, nil, err
	}
	return (*cb)[:n], func() { f.r.bufs.putCipher(cb) }, nil
}

// storeBuffer picks the descriptor and an empty buffer (capacity
// end-off) for storing the encrypted range [off, end) of a whole-block
// write. Large writes whose stored range is 4 KiB aligned (512 KiB-aligned
// plaintext: 128 stored blocks are 129 pages) go to the O_DIRECT
// descriptor from an aligned buffer, whatever the handle's own flags:
// through the buffered descriptor a cold 1 MiB write was a 1 MiB copy into
// the page cache under the backing inode's lock (perf: 45 % of the
// daemon's time in copy_folio_from_iter_atomic, 14 % spinning on the inode
// lock with 16 writes in flight). The returned function gives the buffer
// back.
func (f *cryptFile) storeBuffer(off, end uint64) (int, []byte, func()) {
	n := int(end - off)
	if !f.writable || off%directAlign != 0 || end%directAlign != 0 || n < directReadMin || n > largeBuf || f.directFD() < 0 {
		cb := f.r.bufs.getCipher(n)
		return f.fd, (*cb)[:0], func() { f.r.bufs.putCipher(cb) }
	}
	pb := alignedPool.Get().(*[]byte)
	skip := int(-uintptr(unsafe.Pointer(&(*pb)[0])) & (directAlign - 1))
	return f.dfd, (*pb)[skip:skip], func() { alignedPool.Put(pb) }
}
