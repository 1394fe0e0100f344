package fs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSeekDataHoleProgress writes scattered blocks into a sparse encrypted
// file (the layout of a fresh qcow2: a few clusters, then holes) and walks
// it with alternating SEEK_DATA/SEEK_HOLE, as qemu-img map and sparse copy
// tools do. Every answer must advance, every written block must lie in a
// reported data range, and every reported hole must read as zeros. Stored
// blocks are not page aligned, so a block can start in a backing hole and
// end in data: the case that once made SEEK_DATA == SEEK_HOLE forever.
func TestSeekDataHoleProgress(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	dir := tf.encDir("vm")
	const blocks = 512
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 7))
		path := dir + "/sparse.img"
		_ = os.Remove(path)
		f := openRW(t, path, os.O_CREATE)
		if err := f.Truncate(blocks * 4096); err != nil {
			t.Fatal(err)
		}
		written := map[int64]bool{}
		for range 1 + rng.IntN(20) {
			b := rng.Int64N(blocks)
			n := 1 + rng.IntN(3)
			buf := bytes.Repeat([]byte{byte(1 + rng.IntN(250))}, n*4096)
			if _, err := f.WriteAt(buf, b*4096); err != nil {
				t.Fatal(err)
			}
			for i := range int64(n) {
				written[b+i] = true
			}
		}
		content, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		size := int64(len(content))
		fd := int(f.Fd())
		inData := make([]bool, (size+4095)/4096)
		for off, steps := int64(0), 0; off < size; steps++ {
			if steps > 2*blocks {
				t.Fatalf("seed %d: SEEK_DATA/SEEK_HOLE walk does not terminate (at %d)", seed, off)
			}
			d, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				if !bytes.Equal(content[off:], make([]byte, size-off)) {
					t.Fatalf("seed %d: SEEK_DATA(%d) = ENXIO but data follows", seed, off)
				}
				break
			}
			if err != nil || d < off {
				t.Fatalf("seed %d: SEEK_DATA(%d) = %d, %v", seed, off, d, err)
			}
			if !bytes.Equal(content[off:d], make([]byte, d-off)) {
				t.Fatalf("seed %d: reported hole [%d,%d) holds data", seed, off, d)
			}
			h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
			if err != nil || h <= d {
				t.Fatalf("seed %d: SEEK_HOLE(%d) = %d, %v: does not advance", seed, d, h, err)
			}
			for b := d / 4096; b*4096 < h; b++ {
				inData[b] = true
			}
			off = h
		}
		for b := range written {
			if !inData[b] {
				t.Errorf("seed %d: written block %d not inside any reported data range", seed, b)
			}
		}
		f.Close()
	}
}

// TestStrippedHeaderRefused: an encrypted object whose header xattr was
// removed on the backing store must not be served as a plain file (the
// VM's next writes would land there in plaintext); it gives EIO with a log
// line pointing at fsck --restore-xattrs, also for O_TRUNC opens.
func TestStrippedHeaderRefused(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	dir := tf.encDir("vm")
	mustWrite(t, dir+"/disk.raw", bytes.Repeat([]byte("STRIPPED-"), 2000))
	// An xattr-dropping copy on the backing store (cp, rsync without -X)
	// gives a new inode with the in-file header but no xattr.
	raw, err := os.ReadFile(tf.b("vm/disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tf.b("vm/stripped.raw"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, flags := range []int{os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC} {
		f, err := os.OpenFile(tf.m("vm/stripped.raw"), flags, 0)
		if err == nil {
			f.Close()
			t.Fatalf("open flags %#x of a header-stripped object succeeded", flags)
		}
		if !errors.Is(err, unix.EIO) {
			t.Errorf("open flags %#x: %v, want EIO", flags, err)
		}
	}
	st, err := os.Stat(tf.b("vm/stripped.raw"))
	if err != nil || st.Size() < 4096 {
		t.Fatalf("backing object was changed: %v, %v", st, err)
	}
	if !bytes.Contains([]byte(tf.logs.String()), []byte("restore-xattrs")) {
		t.Errorf("no log line pointing at fsck --restore-xattrs:\n%s", tf.logs.String())
	}
	// A plain file that merely starts with the magic is still plain.
	mustWrite(t, tf.m("plain.txt"), []byte("CDSH but not a header"))
	if got := mustRead(t, tf.m("plain.txt")); string(got) != "CDSH but not a header" {
		t.Fatalf("plain file: %q", got)
	}
}
