package vmctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"
)

// TempPrefix starts the name of every conversion copy. Files with this prefix
// are never treated as VM objects; a run that finds one removes it (its
// original is intact, since the copy is renamed over the original only once
// it is complete and fsync'd).
const TempPrefix = ".cryptds-convert-"

// holeBlock is the granularity at which all-zero data is left as a hole in the
// copy. It is the cryptds plaintext block size, so an encrypted copy's writes
// stay block-aligned and a zero block costs nothing on the backing store.
const holeBlock = 4096

// copyBufSize is the read/write unit; FUSE splits writes at max_write (1 MiB).
const copyBufSize = 1 << 20

// zeroBlock is compared against, never written to.
var zeroBlock [holeBlock]byte

// objConv converts one object at a time; its fields are the knobs that
// differ between a real conversion on a mount and the unit tests.
type objConv struct {
	buf []byte
	// progress receives the number of source bytes processed since the
	// last call (data ranges only; holes are skipped without reading).
	progress func(n int64)
	// hook is a test seam called after every chunk ("copy", bytes so far)
	// and before and after the rename ("rename", "renamed"). A non-nil
	// error aborts the conversion like an I/O error would.
	hook func(stage string, done int64) error
	// verify checks that the finished copy is in the state the conversion
	// wants (encrypted or plain) before it replaces the original. nil: no
	// check.
	verify func(tmp string) error
	// busy re-checks, just before the rename, that nobody opened the object
	// for writing meanwhile. nil: no check (Options.Force).
	busy func(path string) error
	// syncDirs are fsync'd after the rename besides the object's own
	// directory (the backing directory, so the rename is durable there).
	syncDirs []string
	// source maps an object's path on the mount to the path its data is
	// read from; nil: the path itself. vm encrypt reads plain objects from
	// the backing directory: the mount refuses to serve a plain object
	// inside an encrypted VM.
	source func(path string) string
	// allocated returns the plaintext ranges of the object being copied
	// whose storage is allocated (alloc.go); the copy reserves them before
	// the data is written, so a preallocated image stays allocated. nil,
	// or an error (no allocation map), leaves the copy as sparse as
	// skipping zero blocks makes it.
	allocated func(size int64) ([]span, error)
}

func newObjConv() *objConv {
	return &objConv{buf: make([]byte, copyBufSize)}
}

func (c *objConv) callHook(stage string, done int64) error {
	if c.hook == nil {
		return nil
	}
	return c.hook(stage, done)
}

// tempName is the conversion copy's path for the object at path.
func tempName(path string) string {
	return filepath.Join(filepath.Dir(path), TempPrefix+filepath.Base(path))
}

// convert replaces the regular file at path by a copy of itself written
// through the same directory, so the copy is created under the directory's
// current policy. It returns the number of data bytes copied.
//
// Crash safety: the copy is complete and fsync'd (data and metadata) before
// the atomic rename, and the directory is fsync'd after it, so at any moment
// path names either the old or the new object. The copy is removed on every
// error return; after a crash it stays behind under TempPrefix for the next
// run to remove.
func (c *objConv) convert(ctx context.Context, path string) (int64, error) {
	name := filepath.Base(path)
	if len(TempPrefix)+len(name) > 255 {
		return 0, fmt.Errorf("%s: name too long for the conversion copy %s%s (limit 255 bytes)", path, TempPrefix, name)
	}
	// The change check compares the mount's view before and after.
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	srcPath := path
	if c.source != nil {
		srcPath = c.source(path)
	}
	src, err := os.Open(srcPath)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", srcPath, err)
	}
	defer src.Close()
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Nlink > 1 {
		return 0, fmt.Errorf("%s: %w (%d links); copy and rename would split them: remove the extra links first", path, ErrHardLink, st.Nlink)
	}
	tmp := tempName(path)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove leftover %s: %w", tmp, err)
	}
	dst, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", tmp, err)
	}
	// No defer removes tmp: after a simulated crash (the test hook exits
	// the goroutine) the copy must stay behind exactly as after a real one.
	n, err := c.fill(ctx, dst, src, path, tmp, &st)
	if err == nil {
		err = c.check(path, tmp, &st)
	}
	if err == nil {
		err = c.callHook("rename", n)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("rename %s over %s: %w", tmp, path, err)
	}
	for _, d := range append([]string{filepath.Dir(path)}, c.syncDirs...) {
		if err := syncDir(d); err != nil {
			return n, err
		}
	}
	return n, c.callHook("renamed", n)
}

// fill writes the data and metadata of src into dst and closes dst.
func (c *objConv) fill(ctx context.Context, dst, src *os.File, path, tmp string, st *unix.Stat_t) (int64, error) {
	defer dst.Close()
	if c.allocated != nil {
		if spans, err := c.allocated(st.Size); err == nil {
			if err := reserve(dst, spans); err != nil {
				return 0, fmt.Errorf("%s: %w", tmp, err)
			}
		}
	}
	n, err := c.copyData(ctx, dst, src, st.Size)
	if err != nil {
		return 0, fmt.Errorf("copy %s to %s: %w", path, tmp, err)
	}
	// Data first, then metadata: with a writeback cache the kernel may set
	// mtime when it flushes, so times are set after the first fsync.
	if err := dst.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := copyMeta(dst, path, tmp, st); err != nil {
		return 0, err
	}
	if err := dst.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", tmp, err)
	}
	return n, nil
}

// check runs the last tests before the copy may replace the original.
func (c *objConv) check(path, tmp string, before *unix.Stat_t) error {
	if c.verify != nil {
		if err := c.verify(tmp); err != nil {
			return err
		}
	}
	var now unix.Stat_t
	if err := unix.Lstat(path, &now); err != nil {
		return fmt.Errorf("%s: %w: %w", path, ErrChanged, err)
	}
	if now.Ino != before.Ino || now.Size != before.Size || now.Mtim != before.Mtim || now.Ctim != before.Ctim {
		return fmt.Errorf("%s: %w (size %d -> %d, mtime %v -> %v); the copy was discarded, the original is untouched; re-run when nothing writes to it",
			path, ErrChanged, before.Size, now.Size, before.Mtim.Nano(), now.Mtim.Nano())
	}
	if c.busy != nil {
		return c.busy(path)
	}
	return nil
}

// copyData copies the data ranges of src (SEEK_DATA/SEEK_HOLE) to the same
// offsets in dst and sets dst's size, so holes stay holes. Blocks of zeros
// inside data ranges are not written either: a filesystem without lseek
// support reports the whole file as data, and a copy must not turn a sparse
// disk image into a dense one.
func (c *objConv) copyData(ctx context.Context, dst, src *os.File, size int64) (int64, error) {
	fd := int(src.Fd())
	var done int64
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole up to the end
		}
		end := size
		if err != nil {
			start = off // no SEEK_DATA support: treat the rest as data
		} else if e, err := unix.Seek(fd, start, unix.SEEK_HOLE); err == nil && e > start {
			end = min(e, size)
		}
		// A SEEK_HOLE answer that does not move forward (a filesystem bug)
		// must not stall the copy: the rest is then copied as data.
		start = max(start, off) // never step backwards
		if start >= size {
			break
		}
		for pos := start; pos < end; {
			if err := ctx.Err(); err != nil {
				return done, err
			}
			n := int(min(int64(len(c.buf)), end-pos))
			if _, err := src.ReadAt(c.buf[:n], pos); err != nil {
				if errors.Is(err, io.EOF) {
					return done, fmt.Errorf("%w: it shrank to %d bytes", ErrChanged, pos)
				}
				return done, fmt.Errorf("read at %d: %w", pos, err)
			}
			if err := writeNonZero(dst, c.buf[:n], pos); err != nil {
				return done, err
			}
			pos += int64(n)
			done += int64(n)
			if c.progress != nil {
				c.progress(int64(n))
			}
			if err := c.callHook("copy", done); err != nil {
				return done, err
			}
		}
		off = end
	}
	if err := dst.Truncate(size); err != nil {
		return done, fmt.Errorf("set size %d: %w", size, err)
	}
	return done, nil
}

// writeNonZero writes b at off, skipping blocks (aligned on absolute file
// offsets) that are all zero; runs of non-zero blocks go out in one write.
func writeNonZero(dst *os.File, b []byte, off int64) error {
	run := -1
	flush := func(end int) error {
		if run < 0 {
			return nil
		}
		if _, err := dst.WriteAt(b[run:end], off+int64(run)); err != nil {
			return fmt.Errorf("write at %d: %w", off+int64(run), err)
		}
		run = -1
		return nil
	}
	for i := 0; i < len(b); {
		j := min(len(b), i+holeBlock-int((off+int64(i))%holeBlock))
		if bytes.Equal(b[i:j], zeroBlock[:j-i]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if run < 0 {
			run = i
		}
		i = j
	}
	return flush(len(b))
}

// copyMeta gives tmp the owner, mode, user xattrs and times of the original.
// Owner before mode, since chown clears set-id bits.
func copyMeta(dst *os.File, path, tmp string, st *unix.Stat_t) error {
	fd := int(dst.Fd())
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s to %d:%d: %w", tmp, st.Uid, st.Gid, err)
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	names, err := xattr.LList(path)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		return fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	for _, name := range names {
		if !strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "user.cryptds.") {
			continue
		}
		v, err := xattr.LGet(path, name)
		if errors.Is(err, xattr.ENOATTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read xattr %s of %s: %w", name, path, err)
		}
		if err := xattr.FSet(dst, name, v); err != nil {
			return fmt.Errorf("copy xattr %s to %s: %w", name, tmp, err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", tmp, err)
	}
	return nil
}

// syncDir makes a rename in dir durable. Filesystems that cannot fsync a
// directory (EINVAL, ENOTSUP) are not an error: there is nothing more to do.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to fsync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
