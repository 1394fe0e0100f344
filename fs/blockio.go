package fs

import (
	"errors"
	"fmt"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// Block-level I/O of an encrypted object. Every function here runs under the
// object lock (shared for readAt, exclusive for the rest).
//
// Failure rule: a write that returns an error may be lost, but must never
// leave a stored block that fails authentication. Before overwriting stored
// blocks we keep their old ciphertext; if the backing store fails midway we
// write it back and cut the file to its old size. The restore rewrites
// bytes that are already allocated, so it does not need new space.

const (
	bs  = objcrypt.PlainBlockSize
	cbs = objcrypt.CipherBlockSize
	// pageSize is the backing page cache's unit: what a buffered write
	// reads before changing part of it, and where a kill can cut one.
	pageSize = 4096
)

// readAt decrypts into dest from plaintext offset off and returns the
// number of bytes read (short at end of file). It serves a caller's read:
// it reads around and fills around it, and logs a block that fails
// authentication.
func (f *cryptFile) readAt(dest []byte, off uint64) (int, error) {
	return f.readBlocks(dest, off, true)
}

// readBlocks is readAt; with caller false (a fill) it only reads: no
// prefetching, and a failed block is left for a caller's read to report.
func (f *cryptFile) readBlocks(dest []byte, off uint64, caller bool) (int, error) {
	csize, psize, err := f.sizes(false)
	if err != nil {
		return 0, err
	}
	if off >= psize || len(dest) == 0 {
		return 0, nil
	}
	end := min(off+uint64(len(dest)), psize)
	first, count := objcrypt.BlockRange(off, end-off)
	cOff := objcrypt.CipherOffsetOfBlock(first)
	cEnd := min(objcrypt.CipherOffsetOfBlock(first+count), csize)
	read := f.storedRangeBuffered // a fill's window was just read around into the page cache
	if caller {
		f.readAround(cOff, cEnd, csize)
		read = f.storedRange
	}
	cb, release, err := read(cOff, cEnd)
	if err != nil {
		return 0, err
	}
	defer release()
	if len(cb) < int(cEnd-cOff) {
		return 0, fmt.Errorf("%s: backing file shorter than its size: %w", f.n.relPath(), unix.EIO)
	}
	if off%bs == 0 && min((first+count)*bs, psize)-off <= uint64(len(dest)) {
		// Block-aligned start and the blocks' plaintext fits the caller's
		// buffer (the end is block aligned or the end of file): decrypt
		// straight into it (no copy, no pooled plaintext).
		plain, err := f.o.obj.DecryptBlocks(dest[:0], cb, first, f.r.cfg.Pool)
		if err != nil {
			return 0, f.readError(err, caller)
		}
		f.r.stats.decrypted(len(plain))
		if caller {
			f.fillAround(off, len(plain), psize, csize)
		}
		return len(plain), nil
	}
	pb := f.r.bufs.get(int(count * bs))
	defer f.r.bufs.put(pb)
	plain, err := f.o.obj.DecryptBlocks((*pb)[:0], cb, first, f.r.cfg.Pool)
	if err != nil {
		return 0, f.readError(err, caller)
	}
	f.r.stats.decrypted(len(plain))
	n := copy(dest, plain[off-first*bs:end-first*bs])
	if caller {
		f.fillAround(off, n, psize, csize)
	}
	return n, nil
}

// readError reports a block that failed to decrypt: logged and counted for
// a caller's read, passed back silently for a fill.
func (f *cryptFile) readError(err error, caller bool) error {
	if caller {
		return f.blockError(err)
	}
	return err
}

// blockError logs a block that failed to decrypt (file and block number)
// and returns the error for the caller (EIO at the FUSE edge).
func (f *cryptFile) blockError(err error) error {
	var be *objcrypt.BlockError
	if errors.As(err, &be) {
		f.r.stats.authFail.Add(1)
		f.r.log.Error("cryptds: block failed authentication", "file", f.n.relPath(), "block", be.Block, "err", be.Err)
	}
	return fmt.Errorf("%s: %w", f.n.relPath(), err)
}

// ensureRegion writes the in-file header region of an object whose backing
// file is still empty (see createEncrypted).
func (f *cryptFile) ensureRegion(csize uint64) (uint64, error) {
	if csize != 0 {
		return csize, nil
	}
	hdr, err := f.r.readHeaderInner(f.fd)
	if err != nil {
		return 0, err
	}
	region, err := hdr.MarshalRegion()
	if err != nil {
		return 0, err
	}
	if err := pwriteFull(f.fd, region, 0); err != nil {
		unix.Ftruncate(f.fd, 0)
		return 0, err
	}
	return objcrypt.HeaderRegionSize, nil
}

// storedBlock reads the stored form of block blk (csize is the backing
// size) into a pooled buffer; the caller puts it back.
func (f *cryptFile) storedBlock(blk, csize uint64) (*[]byte, error) {
	off := objcrypt.CipherOffsetOfBlock(blk)
	end := min(off+cbs, csize)
	b := f.r.bufs.getCipher(int(end - off))
	n, err := preadFull(f.fd, *b, int64(off))
	if err == nil && n < len(*b) {
		err = fmt.Errorf("%s: short read of block %d: %w", f.n.relPath(), blk, unix.EIO)
	}
	if err != nil {
		f.r.bufs.putCipher(b)
		return nil, err
	}
	return b, nil
}

// holdsData reports whether the backing range [off, end) (end <= csize)
// may hold data. A range that is all hole or unwritten extent (fallocate,
// qemu-img preallocation=falloc, fio's layout) reads as zeros, that is as
// hole blocks: a write there needs no old ciphertext for merging or undo,
// and reading it would only make the kernel zero-fill pages (measured: half
// the daemon's CPU time on a sequential write into a fallocated file).
// When the backing filesystem cannot tell, the answer is true. Ranges
// shorter than holeProbeMin are simply read: for a 4 KiB write the probe
// would cost a syscall as large as the read it might save.
func (f *cryptFile) holdsData(off, end, csize uint64) bool {
	if end-off < holeProbeMin {
		return true
	}
	d, ok, err := f.backingSeek(off, unix.SEEK_DATA, csize)
	return err != nil || (ok && d < end)
}

// holeProbeMin is the backing range size from which holdsData asks the
// backing filesystem instead of assuming data.
const holeProbeMin = 64 << 10

// undo is what restore needs: old ciphertext to put back at offsets, and
// the backing size to cut back to.
type undo struct {
	f     *cryptFile
	csize uint64
	saved []savedRange
	holes [][2]uint64 // backing ranges that held no data: punched back
}

type savedRange struct {
	off uint64
	buf *[]byte
}

func (u *undo) save(off uint64, b *[]byte) { u.saved = append(u.saved, savedRange{off, b}) }

// restore puts the old stored bytes back and cuts the file to its old size.
func (u *undo) restore(cause error) {
	for _, s := range u.saved {
		if _, err := u.f.storeAt(unix.Pwrite, *s.buf, int64(s.off)); err != nil {
			u.f.r.log.Error("cryptds: cannot restore blocks after a failed write", "file", u.f.n.relPath(), "cause", cause, "err", err)
		}
	}
	for _, h := range u.holes {
		if err := unix.Fallocate(u.f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(h[0]), int64(h[1]-h[0])); err != nil {
			u.f.r.log.Error("cryptds: cannot clear blocks after a failed write", "file", u.f.n.relPath(), "cause", cause, "err", err)
		}
	}
	var st unix.Stat_t
	if unix.Fstat(u.f.fd, &st) == nil && uint64(st.Size) > u.csize {
		if err := unix.Ftruncate(u.f.fd, int64(u.csize)); err != nil {
			u.f.r.log.Error("cryptds: cannot cut back after a failed write", "file", u.f.n.relPath(), "cause", cause, "err", err)
		}
	}
}

func (u *undo) release() {
	for _, s := range u.saved {
		u.f.r.bufs.putCipher(s.buf)
	}
}

// writeAt stores data at plaintext offset off.
func (f *cryptFile) writeAt(data []byte, off uint64) error {
	if len(data) == 0 {
		return nil
	}
	csize, psize, err := f.sizes(true)
	if err != nil {
		return err
	}
	if csize, err = f.ensureRegion(csize); err != nil {
		return err
	}
	end := off + uint64(len(data))
	newSize := max(psize, end)
	first, last := off/bs, (end-1)/bs
	oldBlocks := objcrypt.PlainBlocks(psize)
	u := &undo{f: f, csize: csize}
	defer u.release()

	// An old partial last block before the write becomes a full block.
	if psize%bs != 0 && psize/bs < first {
		if err := f.rewriteBlock(u, psize/bs, csize, bs, nil); err != nil {
			u.restore(err)
			return err
		}
	}

	// Old ciphertext of the touched blocks: backup, and the edges' content.
	cOff := objcrypt.CipherOffsetOfBlock(first)
	cOldEnd := min(objcrypt.CipherOffsetOfBlock(last+1), csize)
	var old []byte // nil: the old range holds no data (hole blocks)
	if cOldEnd > cOff && !f.holdsData(cOff, cOldEnd, csize) {
		u.holes = append(u.holes, [2]uint64{cOff, cOldEnd})
	} else if cOldEnd > cOff {
		ob := f.r.bufs.getCipher(int(cOldEnd - cOff))
		u.save(cOff, ob)
		n, err := preadFull(f.fd, *ob, int64(cOff))
		if err == nil && n < len(*ob) {
			err = fmt.Errorf("%s: short read: %w", f.n.relPath(), unix.EIO)
		}
		if err != nil {
			u.restore(err)
			return err
		}
		old = *ob
	}

	pStart, pEnd := first*bs, min((last+1)*bs, newSize)
	cb := f.r.bufs.getCipher(int(objcrypt.CipherSizeFromPlain(pEnd) - objcrypt.CipherSizeFromPlain(pStart)))
	defer f.r.bufs.putCipher(cb)
	var plain []byte
	if off%bs == 0 && (end%bs == 0 || end >= psize) {
		// No edge block to merge (aligned start; the end is aligned or
		// the new end of file): encrypt the caller's data in place of a
		// pooled plaintext copy.
		plain = data
	} else {
		pb := f.r.bufs.get(int(pEnd - pStart))
		defer f.r.bufs.put(pb)
		plain = *pb
		if err := f.mergeEdges(plain, old, data, off, end, psize, first, last, oldBlocks); err != nil {
			u.restore(err)
			return err
		}
	}
	enc, err := f.o.obj.EncryptBlocks((*cb)[:0], plain, first, f.r.cfg.Pool)
	if err != nil {
		u.restore(err)
		return err
	}
	f.r.stats.encrypted(len(plain))
	if _, err := f.storeAt(unix.Pwrite, enc, int64(cOff)); err != nil {
		u.restore(err)
		return err
	}
	return nil
}

// mergeEdges fills plain (the plaintext of blocks first..last) with the
// old content of a partly overwritten first and last block and the new
// data in between.
func (f *cryptFile) mergeEdges(plain, old, data []byte, off, end, psize, first, last, oldBlocks uint64) error {
	pStart := first * bs
	headDone := false
	if off%bs != 0 && first < oldBlocks {
		if err := f.decryptInto(plain, old, 0, first); err != nil {
			return err
		}
		headDone = true
	}
	if end%bs != 0 && last < oldBlocks && end < psize && !(last == first && headDone) {
		if err := f.decryptInto(plain, old, last-first, last); err != nil {
			return err
		}
	}
	copy(plain[off-pStart:], data)
	return nil
}

// decryptInto decrypts the idx-th stored block of old (block number blk)
// into plain at idx*bs.
func (f *cryptFile) decryptInto(plain, old []byte, idx, blk uint64) error {
	if old == nil { // a hole block
		clear(plain[idx*bs : min((idx+1)*bs, uint64(len(plain)))])
		return nil
	}
	s := old[idx*cbs : min((idx+1)*cbs, uint64(len(old)))]
	if _, err := f.o.obj.DecryptBlock(plain[idx*bs:idx*bs], s, blk); err != nil {
		return f.blockError(err)
	}
	f.r.stats.decrypted(len(s) - objcrypt.BlockOverhead)
	return nil
}

// rewriteBlock re-encrypts stored block blk with plaintext length newLen
// (zero-extended or cut), zeroing [zeroFrom, zeroTo) first when zero is
// set. The old stored block is saved in u.
func (f *cryptFile) rewriteBlock(u *undo, blk, csize, newLen uint64, zero *[2]uint64) error {
	old, err := f.storedBlock(blk, csize)
	if err != nil {
		return err
	}
	u.save(objcrypt.CipherOffsetOfBlock(blk), old)
	pb := f.r.bufs.get(bs)
	defer f.r.bufs.put(pb)
	if _, err := f.o.obj.DecryptBlock((*pb)[:0], *old, blk); err != nil {
		return f.blockError(err)
	}
	f.r.stats.decrypted(len(*old) - objcrypt.BlockOverhead)
	plain := (*pb)[:newLen]
	if zero != nil {
		clear(plain[zero[0]:zero[1]])
	}
	cb := f.r.bufs.getCipher(cbs)
	defer f.r.bufs.putCipher(cb)
	enc, err := f.o.obj.EncryptBlock((*cb)[:0], plain, blk)
	if err != nil {
		return err
	}
	f.r.stats.encrypted(len(plain))
	_, err = f.storeAt(unix.Pwrite, enc, int64(objcrypt.CipherOffsetOfBlock(blk)))
	return err
}

// truncateLocked sets the plaintext size: a shrink re-encrypts the new
// partial last block; an extension first re-encrypts an old partial last
// block to its new length, then extends the backing file, so the new
// blocks are all-zero stored blocks, which read as zeros (holes).
func (f *cryptFile) truncateLocked(size uint64) error {
	csize, psize, err := f.sizes(true)
	if err != nil {
		return err
	}
	if csize, err = f.ensureRegion(csize); err != nil {
		return err
	}
	if size == psize {
		// Nothing to cut, but a truncate or an O_TRUNC open still marks
		// mtime and ctime (POSIX); cutting the backing file to its own
		// size does what the backing filesystem does for a plain file.
		if err := unix.Ftruncate(f.fd, int64(csize)); err != nil {
			return fmt.Errorf("ftruncate: %w", err)
		}
		return nil
	}
	u := &undo{f: f, csize: csize}
	defer u.release()
	newCsize := objcrypt.CipherSizeFromPlain(size)
	if size < psize {
		if r := size % bs; r != 0 {
			// Cut first, then write the shorter block over the old one's start.
			blk := size / bs
			old, err := f.storedBlock(blk, csize)
			if err != nil {
				return err
			}
			u.save(objcrypt.CipherOffsetOfBlock(blk), old)
			return f.shrinkBlock(u, blk, *old, size)
		}
		if err := unix.Ftruncate(f.fd, int64(newCsize)); err != nil {
			return fmt.Errorf("ftruncate: %w", err)
		}
		return nil
	}
	if psize%bs != 0 {
		blk := psize / bs
		if err := f.rewriteBlock(u, blk, csize, min(bs, size-blk*bs), nil); err != nil {
			u.restore(err)
			return err
		}
	}
	if err := unix.Ftruncate(f.fd, int64(newCsize)); err != nil {
		err = fmt.Errorf("ftruncate: %w", err)
		u.restore(err)
		return err
	}
	return nil
}

// shrinkBlock re-encrypts the start of stored block old as the new last
// block of a file of plaintext size, and cuts the backing file after it,
// recorded so that a crash in between leaves no unreadable block (shrink.go).
// On failure it puts the old block back (u).
func (f *cryptFile) shrinkBlock(u *undo, blk uint64, old []byte, size uint64) error {
	pb := f.r.bufs.get(bs)
	defer f.r.bufs.put(pb)
	plain, err := f.o.obj.DecryptBlock((*pb)[:0], old, blk)
	if err != nil {
		return f.blockError(err)
	}
	cb := f.r.bufs.getCipher(cbs)
	defer f.r.bufs.putCipher(cb)
	enc, err := f.o.obj.EncryptBlock((*cb)[:0], plain[:size%bs], blk)
	if err != nil {
		return err
	}
	f.r.stats.encrypted(int(size % bs))
	marked, err := f.markShrink(size)
	if err != nil {
		return err
	}
	if marked {
		defer f.unmarkShrink()
	}
	if _, err := f.storeAt(f.r.pwrite, enc, int64(objcrypt.CipherOffsetOfBlock(blk))); err != nil {
		u.restore(err)
		return err
	}
	if err := unix.Ftruncate(f.fd, int64(objcrypt.CipherSizeFromPlain(size))); err != nil {
		err = fmt.Errorf("ftruncate: %w", err)
		u.restore(err)
		return err
	}
	return nil
}

// reserveLocked is fallocate mode 0 / KEEP_SIZE: reserve backing space for
// the blocks of the range, then (mode 0) extend the plaintext size.
func (f *cryptFile) reserveLocked(off, size uint64, extend bool) error {
	if size == 0 {
		return fmt.Errorf("fallocate of 0 bytes: %w", unix.EINVAL)
	}
	csize, psize, err := f.sizes(true)
	if err != nil {
		return err
	}
	if _, err = f.ensureRegion(csize); err != nil {
		return err
	}
	cOff := objcrypt.CipherOffsetOfBlock(off / bs)
	cEnd := objcrypt.CipherSizeFromPlain(off + size)
	if err := unix.Fallocate(f.fd, unix.FALLOC_FL_KEEP_SIZE, int64(cOff), int64(cEnd-cOff)); err != nil {
		return fmt.Errorf("fallocate: %w", err)
	}
	if extend && off+size > psize {
		return f.truncateLocked(off + size)
	}
	return nil
}

// punchLocked is PUNCH_HOLE|KEEP_SIZE (QEMU discard): blocks wholly inside
// the range (up to end of file) are punched in the backing file, so they
// read as zeros and free their space; partly covered edge blocks are
// re-encrypted with the range zeroed.
func (f *cryptFile) punchLocked(off, size uint64) error {
	csize, psize, err := f.sizes(true)
	if err != nil {
		return err
	}
	end := min(off+size, psize)
	if size == 0 || off >= end {
		return nil
	}
	first, last := off/bs, (end-1)/bs
	blockLen := func(b uint64) uint64 { return min(bs, psize-b*bs) }
	fullFrom, fullTo := first, last+1 // blocks [fullFrom, fullTo) are wholly covered
	u := &undo{f: f, csize: csize}
	defer u.release()
	if off%bs != 0 {
		to := min(end-first*bs, blockLen(first))
		if err := f.rewriteBlock(u, first, csize, blockLen(first), &[2]uint64{off % bs, to}); err != nil {
			u.restore(err)
			return err
		}
		fullFrom = first + 1
	}
	if end-last*bs < blockLen(last) && (last != first || off%bs == 0) {
		if err := f.rewriteBlock(u, last, csize, blockLen(last), &[2]uint64{max(off, last*bs) - last*bs, end - last*bs}); err != nil {
			u.restore(err)
			return err
		}
		fullTo = last
	}
	if fullFrom < fullTo {
		cOff := objcrypt.CipherOffsetOfBlock(fullFrom)
		cEnd := min(objcrypt.CipherOffsetOfBlock(fullTo), csize)
		if err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(cOff), int64(cEnd-cOff)); err != nil {
			return fmt.Errorf("punch hole: %w", err)
		}
	}
	return nil
}

// zeroLocked is ZERO_RANGE: the range reads as zeros afterwards and its
// backing space is allocated, and (extend) the file grows to its end. The
// punch turns whole blocks into holes, which read as zeros, and re-encrypts
// the edge blocks; the reservation then allocates the holes again as
// unwritten extents, which read as zeros too. A reservation that fails
// (ENOSPC) leaves the range zeroed, as on a local filesystem.
func (f *cryptFile) zeroLocked(off, size uint64, extend bool) error {
	if size == 0 {
		return fmt.Errorf("fallocate of 0 bytes: %w", unix.EINVAL)
	}
	if err := f.punchLocked(off, size); err != nil {
		return err
	}
	return f.reserveLocked(off, size, extend)
}

// writeWholeBlocks serves a write of whole blocks at a block-aligned
// offset into an object without a partial last block. Such a write touches
// no block but its own and leaves every stored block full, so it runs with
// the object lock shared and only its block range held: in parallel with
// other such writes and with reads of other blocks. handled is false when
// the write needs the exclusive path (unaligned, header region not yet
// written, or a partial last block to re-encrypt).
//
// It reads no old ciphertext: every block it touches is wholly the
// caller's, so a failed write needs no old content back (see
// repairWholeBlocks), and a random overwrite of a cold image costs one
// backing write instead of a read and a write. trim asks the caller to cut
// a partly written trailing block under the exclusive lock.
func (f *cryptFile) writeWholeBlocks(data []byte, off uint64) (handled bool, trim *tailTrim, err error) {
	if off%bs != 0 || len(data) == 0 || uint64(len(data))%bs != 0 {
		return false, nil, nil
	}
	f.o.mu.RLock()
	defer f.o.mu.RUnlock()
	if f.o.revoked.Load() {
		return true, nil, f.r.errShredded(f.n.relPath(), f.o.kek)
	}
	first, n := off/bs, uint64(len(data))/bs
	tok := f.o.blocks.lock(first, first+n, true)
	defer f.o.blocks.unlock(tok)
	csize, psize, err := f.sizes(true)
	if err != nil {
		return true, nil, err
	}
	if csize < objcrypt.HeaderRegionSize || psize%bs != 0 {
		return false, nil, nil
	}
	cOff, cEnd := objcrypt.CipherOffsetOfBlock(first), objcrypt.CipherOffsetOfBlock(first+n)
	if err := f.warmPages(cOff, min(cEnd, csize)); err != nil {
		return true, nil, err
	}
	fd, dst, release := f.storeBuffer(cOff, cEnd)
	defer release()
	enc, err := f.o.obj.EncryptBlocks(dst, data, first, f.r.cfg.Pool)
	if err != nil {
		return true, nil, err
	}
	f.r.stats.encrypted(len(data))
	store := func(fd int) (int, error) {
		if fd == f.fd {
			return f.storeAt(f.r.pwrite, enc, int64(cOff))
		}
		return pwriteCounted(f.r.pwrite, fd, enc, int64(cOff))
	}
	written, err := store(fd)
	if fd != f.fd && f.directRefused(err, written) {
		fd = f.fd
		written, err = store(fd)
	}
	if fd != f.fd {
		f.r.stats.directWrite.Add(uint64(written))
	}
	if err != nil {
		f.repairWholeBlocks(cOff, min(cEnd, max(csize, cOff)), cEnd, uint64(written), err)
		var st unix.Stat_t
		if unix.Fstat(f.fd, &st) == nil && uint64(st.Size) > cOff && uint64(st.Size) < cEnd {
			return true, &tailTrim{size: uint64(st.Size), to: max(cOff, csize)}, err
		}
		return true, nil, err
	}
	return true, nil, nil
}

// warmPageMax is the largest existing backing range warmPages reads.
const warmPageMax = 64 << 10

// warmPages reads the backing pages under a small write's existing range
// [off, end) in one request. Stored blocks are 4128 bytes, so a block
// write covers its first and last backing page only in part and the
// kernel must read those pages before it can change them, one synchronous
// read per page; one read of the span is half the waiting on a cold image
// (measured: 4 KiB O_DIRECT random writes on a cold file, ~4k IOPS without
// it, ~11k with it). A large write covers all but two of its pages fully:
// reading them all would cost more than it saves.
func (f *cryptFile) warmPages(off, end uint64) error {
	if end <= off || end-off > warmPageMax {
		return nil
	}
	from, to := off/pageSize*pageSize, (end+pageSize-1)/pageSize*pageSize
	b := f.r.bufs.getCipher(int(to - from))
	defer f.r.bufs.putCipher(b)
	_, err := preadFull(f.fd, *b, int64(from))
	return err
}

// tailTrim is a trailing fragment a failed whole-block write left behind:
// the backing size it made, and the frame boundary to cut back to.
type tailTrim struct{ size, to uint64 }

// repairWholeBlocks leaves no half-written block after a whole-block write
// of backing range [cOff, cEnd) failed with only its first written bytes
// stored. [cOff, cOldEnd) existed before the write: its blocks now hold
// their new content (before the failure point), their old content (after
// it), or, for the one block the failure cut through, a hole punched in
// place of a block that would fail authentication; that block lay wholly
// inside the failed write, whose content POSIX leaves unspecified. Blocks
// the file did not have before are punched so they read as holes.
func (f *cryptFile) repairWholeBlocks(cOff, cOldEnd, cEnd, written uint64, cause error) {
	punch := func(from, to uint64) {
		if from >= to {
			return
		}
		if err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(from), int64(to-from)); err != nil {
			f.r.log.Error("cryptds: cannot clear a partly written block after a failed write", "file", f.n.relPath(), "cause", cause, "err", err)
		}
	}
	if torn := cOff + written; torn < cOldEnd && written%cbs != 0 {
		start := cOff + written/cbs*cbs
		punch(start, min(start+cbs, cOldEnd))
	}
	punch(cOldEnd, cEnd)
}

// trimPartialTail cuts the fragment a failed whole-block write left at the
// end of the file. Called with the object lock held exclusively, so no
// other write is extending the file; if the size moved since the failure,
// another write has already made the end consistent and nothing is cut.
func (f *cryptFile) trimPartialTail(t *tailTrim) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil || uint64(st.Size) != t.size {
		return
	}
	if err := unix.Ftruncate(f.fd, int64(t.to)); err != nil {
		f.r.log.Error("cryptds: cannot cut a partly written block after a failed write", "file", f.n.relPath(), "err", err)
	}
}
