package fs

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// A truncate that ends inside a block cannot be one backing operation: the
// new last block is shorter, so it must be re-encrypted and the file cut.
// Cutting first leaves a block that fails authentication if the daemon dies
// before the rewrite; rewriting first leaves a block whose start is new and
// whose rest is old. So the daemon records the new plaintext size in the
// xattrShrink of the backing file first, then rewrites the block in place,
// cuts the file and removes the record. The first open after a crash
// (finishShrink) reads the record: if the stored bytes before the recorded
// end authenticate as the new last block, the rewrite happened and the cut
// is done now; otherwise the old block is intact and the truncate is
// forgotten, as if it had never been called. Either way no block fails
// authentication, and no byte written before the truncate is lost.
const xattrShrink = "user.cryptds.shrink"

// markShrink records the truncate to plaintext size in the backing file. A
// backing filesystem without room for the xattr (ENOSPC, EDQUOT: shrinking
// is how a full datastore gets space back) gets the truncate unrecorded.
func (f *cryptFile) markShrink(size uint64) (bool, error) {
	err := unix.Fsetxattr(f.fd, xattrShrink, []byte(strconv.FormatUint(size, 10)), 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT):
		f.r.log.Warn("cryptds: no room to record a truncate; a crash during it would leave its last block unreadable", "file", f.n.relPath(), "err", err)
		return false, nil
	default:
		return false, fmt.Errorf("record truncate: %w", err)
	}
}

// unmarkShrink removes the record once the truncate finished or was undone.
func (f *cryptFile) unmarkShrink() {
	if err := removeShrinkRecord(f.fd); err != nil {
		f.r.log.Error("cryptds: cannot remove the record of a finished truncate", "file", f.n.relPath(), "err", err)
	}
}

// finishShrink completes or forgets a truncate the daemon died in (see
// xattrShrink). It runs at the first open of an object, before any read
// or write can see the file. It never fails the open: if the record
// cannot be settled (a read-only backing store), it stays for a later
// open, and at worst the last block reads as EIO.
func (r *Root) finishShrink(fd int, obj *objcrypt.Object, path string) {
	val := make([]byte, 24)
	n, err := unix.Fgetxattr(fd, xattrShrink, val)
	if errors.Is(err, unix.ENODATA) {
		return
	}
	if err := r.settleShrink(fd, obj, path, val[:max(n, 0)], err); err != nil {
		r.log.Error("cryptds: cannot settle an interrupted truncate; its last block may read as EIO until a later open settles it", "file", path, "err", err)
	}
}

func (r *Root) settleShrink(fd int, obj *objcrypt.Object, path string, val []byte, readErr error) error {
	size, perr := strconv.ParseUint(string(val), 10, 64)
	if readErr != nil || perr != nil || size%bs == 0 || size > objcrypt.MaxPlainSize {
		r.log.Error("cryptds: dropping an unreadable truncate record", "file", path, "err", errors.Join(readErr, perr))
		return removeShrinkRecord(fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	newCsize := objcrypt.CipherSizeFromPlain(size)
	if uint64(st.Size) > newCsize {
		blk := size / bs
		off := objcrypt.CipherOffsetOfBlock(blk)
		stored := make([]byte, newCsize-off)
		if _, err := preadFull(fd, stored, int64(off)); err != nil {
			return err
		}
		if _, err := obj.DecryptBlock(nil, stored, blk); err == nil {
			wfd, err := openNoAtime(fd, unix.O_WRONLY)
			if err != nil {
				return fmt.Errorf("reopen to finish the cut: %w", err)
			}
			err = unix.Ftruncate(wfd, int64(newCsize))
			unix.Close(wfd)
			if err != nil {
				return fmt.Errorf("ftruncate: %w", err)
			}
			r.log.Warn("cryptds: finished a truncate the daemon was stopped in", "file", path, "size", size)
		} else {
			r.log.Warn("cryptds: forgot a truncate the daemon was stopped in before it changed the file", "file", path, "size", size)
		}
	}
	return removeShrinkRecord(fd)
}

// removeShrinkRecord removes the record through any descriptor of the
// file (xattrs need the inode's permission, not a writable descriptor).
func removeShrinkRecord(fd int) error {
	if err := unix.Fremovexattr(fd, xattrShrink); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove the truncate record: %w", err)
	}
	return nil
}
