package fs

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP tells written extents from unwritten ones, which the backing
// filesystem's SEEK_DATA cannot: it counts every up-to-date cached page
// of an unwritten extent as data, and the daemon's own partial-page
// writes and read-ahead leave such zero pages around stored blocks.

// fiemapExtent is struct fiemap_extent (linux/fiemap.h).
type fiemapExtent struct {
	logical, physical, length uint64
	_                         [2]uint64
	flags                     uint32
	_                         [3]uint32
}

// fiemapHdr is struct fiemap without its extents.
type fiemapHdr struct {
	start, length                  uint64
	flags, mapped, count, reserved uint32
}

const (
	fsIocFiemap                  = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapExtentLast             = 0x1
	fiemapExtentUnwritten        = 0x800
	fiemapBatch                  = 32
	fiemapSpan            uint64 = 1 << 30
)

// fiemapReq is one FS_IOC_FIEMAP argument with room for fiemapBatch
// extents.
type fiemapReq struct {
	hdr fiemapHdr
	ext [fiemapBatch]fiemapExtent
}

// writtenFrom returns the end of the written (or delayed-allocation) data
// that covers backing offset off without a gap or an unwritten extent:
// off itself when none covers it. ok is false when the backing
// filesystem has no FIEMAP.
func writtenFrom(fd int, off uint64) (end uint64, ok bool) {
	var req fiemapReq
	req.hdr = fiemapHdr{start: off, length: fiemapSpan, count: fiemapBatch}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&req))); e != 0 {
		return 0, false
	}
	end = off
	for _, e := range req.ext[:min(req.hdr.mapped, fiemapBatch)] {
		if e.logical > end || e.flags&fiemapExtentUnwritten != 0 {
			break
		}
		end = max(end, e.logical+e.length)
		if e.flags&fiemapExtentLast != 0 {
			break
		}
	}
	return end, true
}
