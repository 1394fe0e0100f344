package vmctl

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/objcrypt"
)

// Allocation preservation: a conversion copies data through the mount, and
// blocks of zeros are not written (so a sparse image stays sparse even
// where SEEK_DATA sees data). A preallocated ("thick") disk image must stay
// allocated all the same: its owner chose to reserve the space (no ENOSPC
// inside the VM later, no fragmentation). So the copy first reserves, with
// fallocate through the mount, every plaintext range whose storage is
// allocated in the source's backing file; holes stay holes.

// span is a plaintext byte range [off, end).
type span struct{ off, end int64 }

// fiemap ioctl layout (linux/fiemap.h).
const (
	fsIocFiemap       = 0xC020660B
	fiemapFlagSync    = 0x1
	fiemapExtentLast  = 0x1
	fiemapExtentBatch = 128
)

type fiemapHdr struct {
	start, length                       uint64
	flags, mapped, extentCount, reserve uint32
}

type fiemapExtent struct {
	logical, physical, length uint64
	reserved64                [2]uint64
	flags                     uint32
	reserved                  [3]uint32
}

// backingExtents returns the allocated byte ranges of the file at path:
// written and unwritten (fallocated) extents from FIEMAP, or, where the
// filesystem has no FIEMAP (tmpfs), the data ranges SEEK_DATA/SEEK_HOLE
// report.
func backingExtents(path string) ([]span, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	exts, err := fiemap(int(f.Fd()), st.Size)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		exts, err = seekData(int(f.Fd()), st.Size)
	}
	if err != nil {
		return nil, fmt.Errorf("allocation map of %s: %w", path, err)
	}
	return exts, nil
}

// fiemap lists the extents of fd up to size, unwritten ones included.
func fiemap(fd int, size int64) ([]span, error) {
	const hdrSize = int(unsafe.Sizeof(fiemapHdr{}))
	buf := make([]byte, hdrSize+fiemapExtentBatch*int(unsafe.Sizeof(fiemapExtent{})))
	hdr := (*fiemapHdr)(unsafe.Pointer(&buf[0]))
	exts := unsafe.Slice((*fiemapExtent)(unsafe.Pointer(&buf[hdrSize])), fiemapExtentBatch)
	var out []span
	for start := uint64(0); start < uint64(size); {
		clear(buf)
		hdr.start, hdr.length = start, ^uint64(0)-start
		hdr.flags, hdr.extentCount = fiemapFlagSync, fiemapExtentBatch
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return nil, e
		}
		if hdr.mapped == 0 {
			break
		}
		last := false
		for _, e := range exts[:hdr.mapped] {
			out = appendSpan(out, span{int64(e.logical), int64(min(e.logical+e.length, uint64(size)))})
			start = e.logical + e.length
			last = last || e.flags&fiemapExtentLast != 0
		}
		if last {
			break
		}
	}
	return out, nil
}

// seekData lists the data ranges of fd up to size.
func seekData(fd int, size int64) ([]span, error) {
	var out []span
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		if end <= start { // a filesystem bug must not stall us
			end = size
		}
		out = appendSpan(out, span{start, min(end, size)})
		off = end
	}
	return out, nil
}

// appendSpan appends s, merging it with the last span when they touch.
func appendSpan(out []span, s span) []span {
	if s.end <= s.off {
		return out
	}
	if n := len(out); n > 0 && s.off <= out[n-1].end {
		out[n-1].end = max(out[n-1].end, s.end)
		return out
	}
	return append(out, s)
}

// plainSpans maps the allocated ranges of a backing file to the plaintext
// ranges of an object of plainSize bytes: the identity for a plain object;
// for an encrypted one, every block with any stored byte allocated (the
// header region holds no plaintext).
func plainSpans(backing []span, encrypted bool, plainSize int64) []span {
	var out []span
	for _, b := range backing {
		s := b
		if encrypted {
			s = cipherToPlain(b)
		}
		s.end = min(s.end, plainSize)
		out = appendSpan(out, s)
	}
	return out
}

// cipherToPlain maps a backing byte range of an encrypted object to the
// plaintext range of the blocks it touches.
func cipherToPlain(b span) span {
	const hdr, cb, pb = objcrypt.HeaderRegionSize, objcrypt.CipherBlockSize, objcrypt.PlainBlockSize
	if b.end <= hdr {
		return span{}
	}
	first := (max(b.off, hdr) - hdr) / cb
	last := (b.end - 1 - hdr) / cb
	return span{first * pb, (last + 1) * pb}
}

// reserve fallocates (KEEP_SIZE: the size is set by the copy) each span
// in dst. A filesystem that cannot preallocate keeps the copy sparse.
func reserve(dst *os.File, spans []span) error {
	for _, s := range spans {
		err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_KEEP_SIZE, s.off, s.end-s.off)
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("preallocate %d bytes at %d: %w", s.end-s.off, s.off, err)
		}
	}
	return nil
}
