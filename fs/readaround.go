package fs

import (
	"golang.org/x/sys/unix"
)

// Small reads of buffered handles read around their block.
//
// A buffered random reader (QEMU cache=writeback on a small image, a
// backup agent probing a disk, fio randread) misses the mount's page cache
// one 4 KiB page at a time, and every miss was one synchronous disk read
// of the two backing pages under its 4128-byte block: about the disk's
// latency per request, as on the raw backing filesystem. The kernel reads
// no further for random access (and none at all after FADV_RANDOM, which
// fio sets), and the FUSE request never says more than the page it wants.
//
// So a read smaller than readAroundWindow asks the backing filesystem to
// read the readAroundWindow-aligned stored range holding it
// (FADV_WILLNEED: one asynchronous request the block's own read then waits
// on). Later misses in that range find their ciphertext cached and cost
// a FUSE round trip instead of a disk read. Measured on this machine with
// cold 4 KiB random reads of a 512 MiB file: median latency 84-90 ->
// 22-24 us (docs/BENCHMARKS.md, knob table).
//
// Reading around only pays if the neighbours are read before the page
// cache evicts them. It is done for files whose stored size is at most
// readAroundLimit: then the cache can hold all of the file, so every page
// is read from the disk at most once more than the reader asked for, and
// the extra reading is bounded by the file's size. A larger file (a big VM
// disk under random load) keeps the kernel's behaviour: no extra disk
// bandwidth for neighbours that would be evicted before use. O_DIRECT
// handles never read around: their caller asked for no host caching.
const readAroundWindow = 128 << 10

// defaultReadAroundLimit is 1/16 of the machine's memory.
func defaultReadAroundLimit() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit) / 16
}

// readAround starts reading the window around the stored range [off, end)
// of a small read into the backing page cache (see readAroundWindow).
func (f *cryptFile) readAround(off, end, csize uint64) {
	if f.direct || end-off >= readAroundWindow || csize > f.r.readAroundLimit {
		return
	}
	start := off &^ (readAroundWindow - 1)
	if unix.Fadvise(f.fd, int64(start), readAroundWindow, unix.FADV_WILLNEED) == nil {
		f.r.stats.readAround.Add(1)
	}
}
