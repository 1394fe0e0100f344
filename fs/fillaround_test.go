package fs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestFillAround reads one page of an encrypted file and checks whether
// the daemon then stored the window around it in the mount's page cache:
// only for a buffered read while no writable handle is open and the file
// is within the size limit. A stored window must read back right without
// another block decrypted.
func TestFillAround(t *testing.T) {
	const (
		size = 2 << 20
		page = 300
	)
	cases := []struct {
		name     string
		limit    int64
		flags    int
		writer   bool // a writable handle is open during the read
		wantFill bool
	}{
		{"read-only file", 0, 0, false, true},
		{"writable handle open", 0, 0, true, false},
		{"O_DIRECT handle", 0, syscall.O_DIRECT, false, false},
		{"file above the limit", 1 << 20, 0, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tf, want := newEncryptedFile(t, c.limit, size)
			if c.writer {
				openRW(t, tf.m("vm/disk"), 0)
			}
			f := openRandom(t, tf.m("vm/disk"), c.flags)
			before := tf.root.Stats().CacheFills
			buf := make([]byte, 4096)
			if _, err := f.ReadAt(buf, page*4096); err != nil {
				t.Fatal(err)
			}
			n := nodeOf(t, tf, "vm/disk")
			waitFor(t, "the fill in flight", func() bool {
				n.cache.mu.Lock()
				defer n.cache.mu.Unlock()
				return !n.cache.busy
			})
			fills := tf.root.Stats().CacheFills - before
			start := int64(page * 4096 / fillWindow * fillWindow)
			var cs unix.Cachestat_t
			if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{Off: uint64(start), Len: fillWindow}, &cs, 0); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("cachestat(2) (Linux 6.5+), which CI needs to see the mount's page cache: %v", err)
				}
				t.Skipf("cachestat(2) (Linux 6.5+): %v", err)
			}
			if c.wantFill && (fills != 1 || cs.Cache != fillWindow/4096) {
				t.Fatalf("%d fills, %d of the window's %d pages cached; want the window stored", fills, cs.Cache, fillWindow/4096)
			}
			if !c.wantFill && (fills != 0 || cs.Cache > 1) {
				t.Fatalf("%d fills, %d of the window's pages cached; want only the page read", fills, cs.Cache)
			}
			decrypted := tf.root.Stats().BlocksDecrypted
			win := make([]byte, fillWindow)
			if _, err := f.ReadAt(win, start); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(win, want[start:start+fillWindow]) {
				t.Error("the window reads back different bytes")
			}
			if d := tf.root.Stats().BlocksDecrypted - decrypted; c.wantFill && d != 0 {
				t.Errorf("reading the stored window decrypted %d blocks, want 0", d)
			}
		})
	}
}

// TestFillAroundWriters keeps readers reading random pages of an encrypted
// file through read-only handles (so windows get stored; they evict the
// file's cache at every open, as memory pressure would) while a writer
// opens, writes one block and closes, over and over; after every close,
// the read-only handles must read the block's new content. A window
// decrypted before a write and stored after it would show old bytes.
func TestFillAroundWriters(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	const blocks = 256
	want := randBytes(blocks * objcrypt.PlainBlockSize)
	mustWrite(t, tf.m("vm/disk"), want)
	dropMountCache(t, tf.m("vm/disk"))
	inBackground(t, 2, func() bool {
		f, err := os.Open(tf.m("vm/disk"))
		if err != nil {
			t.Error(err)
			return false
		}
		defer f.Close()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
		buf := make([]byte, 4096)
		for range 16 {
			f.ReadAt(buf, int64(rand.IntN(blocks))*4096)
		}
		return true
	})
	reader, err := os.Open(tf.m("vm/disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	got := make([]byte, 4096)
	for i := range 300 {
		blk := rand.IntN(blocks)
		data := randBytes(4096)
		w, err := os.OpenFile(tf.m("vm/disk"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(data, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
		w.Close()
		copy(want[blk*4096:], data)
		// A neighbour read may start a fill of this block's window.
		reader.ReadAt(got, int64(blk^1)*4096)
		if _, err := reader.ReadAt(got, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("round %d: block %d reads old bytes after its write", i, blk)
		}
	}
	if all := readAll(t, reader, len(want)); !bytes.Equal(all, want) {
		t.Error("the file differs from every write applied in order")
	}
	if tf.root.Stats().CacheFills == 0 {
		t.Error("no window was stored: the test did not exercise fills")
	}
}

// TestFillAroundTamperedBlock reads a good block next to a tampered one
// through a buffered handle: the fill of their window fails without a log
// line or a counted failure (nobody read the bad block yet); the bad
// block's own read then fails with EIO and is reported, and good blocks
// still read.
func TestFillAroundTamperedBlock(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	data := randBytes(16 * 4096)
	mustWrite(t, tf.m("vm/f"), data)
	tf.waitReleased()
	flipBackingByte(t, tf.b("vm/f"), int64(objcrypt.CipherOffsetOfBlock(5))+100)

	f := openRandom(t, tf.m("vm/f"), 0)
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:4096]) {
		t.Fatalf("read of good block 0: %v", err)
	}
	n := nodeOf(t, tf, "vm/f")
	waitFor(t, "the fill in flight", func() bool {
		n.cache.mu.Lock()
		defer n.cache.mu.Unlock()
		return !n.cache.busy
	})
	if got := tf.root.Stats().AuthFailures; got != 0 || strings.Contains(tf.logs.String(), "block failed authentication") {
		t.Fatalf("the fill reported the tampered block (%d failures counted): %s", got, tf.logs.String())
	}
	if _, err := f.ReadAt(buf, 5*4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the tampered block: %v, want EIO", err)
	}
	// The kernel may ask twice (read-ahead, then the page itself).
	if got := tf.root.Stats().AuthFailures; got == 0 || !strings.Contains(tf.logs.String(), "block=5") {
		t.Fatalf("%d failures counted after reading the tampered block, want it reported (log: %s)", got, tf.logs.String())
	}
	if _, err := f.ReadAt(buf, 7*4096); err != nil || !bytes.Equal(buf, data[7*4096:8*4096]) {
		t.Fatalf("read of good block 7: %v", err)
	}
}

// TestFillAroundWholeSmallFile reads a small file in one request: there is
// nothing left in its window to store, so no fill runs.
func TestFillAroundWholeSmallFile(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	data := randBytes(20000)
	mustWrite(t, tf.m("vm/nvram"), data)
	tf.waitReleased()
	dropMountCache(t, tf.m("vm/nvram"))
	before := tf.root.Stats().CacheFills
	if got := mustRead(t, tf.m("vm/nvram")); !bytes.Equal(got, data) {
		t.Fatal("read differs")
	}
	n := nodeOf(t, tf, "vm/nvram")
	waitFor(t, "the fill in flight", func() bool {
		n.cache.mu.Lock()
		defer n.cache.mu.Unlock()
		return !n.cache.busy
	})
	if fills := tf.root.Stats().CacheFills - before; fills != 0 {
		t.Errorf("%d fills after reading a whole small file, want 0", fills)
	}
}
