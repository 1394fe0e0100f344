package fs

import (
	"bytes"
	"os"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestReadAround reads one block of a cold encrypted file through the mount
// and checks which of the backing pages around it the backing page cache
// then holds: the whole aligned window for a small buffered read of a file
// within the limit, only the block's own pages for an O_DIRECT handle or a
// file above the limit.
func TestReadAround(t *testing.T) {
	const (
		size  = 2 << 20
		block = 300 // stored far from the header region, which opens read
	)
	cases := []struct {
		name      string
		limit     int64
		flags     int
		wantAhead bool
	}{
		{"buffered handle", 0, 0, true},
		{"O_DIRECT handle", 0, syscall.O_DIRECT, false},
		{"file above the limit", 1 << 20, 0, false},
		{"read-around off", -1, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tf, want := newEncryptedFile(t, c.limit, size)
			// A writable handle keeps fills (fillaround.go) out: their
			// own reads would cache the window whatever read-around did.
			openRW(t, tf.m("vm/disk"), 0)
			back := mustOpenFd(t, tf.b("vm/disk"))
			defer unix.Close(back)
			if err := unix.Fsync(back); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fadvise(back, 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			f := openRandom(t, tf.m("vm/disk"), c.flags)
			before := tf.root.Stats().ReadArounds
			buf := make([]byte, objcrypt.PlainBlockSize)
			if _, err := f.ReadAt(buf, block*objcrypt.PlainBlockSize); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, want[block*objcrypt.PlainBlockSize:(block+1)*objcrypt.PlainBlockSize]) {
				t.Fatal("the block read back differs from the one written")
			}
			start := objcrypt.CipherOffsetOfBlock(block) &^ (readAroundWindow - 1)
			var cs unix.Cachestat_t
			if err := unix.Cachestat(uint(back), &unix.CachestatRange{Off: start, Len: readAroundWindow}, &cs, 0); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("cachestat(2) (Linux 6.5+), which CI needs to see the backing page cache: %v", err)
				}
				t.Skipf("cachestat(2) (Linux 6.5+): %v", err)
			}
			const pages = readAroundWindow / 4096
			arounds := tf.root.Stats().ReadArounds - before
			if c.wantAhead && (cs.Cache < pages-1 || arounds != 1) {
				t.Errorf("%d of the window's %d backing pages cached, %d read-arounds counted; want the window read", cs.Cache, pages, arounds)
			}
			if !c.wantAhead && (cs.Cache > 3 || arounds != 0) {
				t.Errorf("%d of the window's %d backing pages cached, %d read-arounds counted; want only the block's own pages", cs.Cache, pages, arounds)
			}
		})
	}
}

// openRandom opens path read-only (plus flags) for random reads, as fio
// does for random jobs: FADV_RANDOM, so the kernel reads nothing ahead
// and every miss reaches the daemon as the page asked for.
func openRandom(t *testing.T, path string, flags int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|flags, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	return f
}

// newEncryptedFile mounts a fresh cryptds with the given read-around limit
// and writes size random bytes to the encrypted file vm/disk, whose
// handles are released on return.
func newEncryptedFile(t *testing.T, limit int64, size int) (*testFS, []byte) {
	t.Helper()
	tf := newTestFS(t, testOpts{readAroundLimit: limit})
	tf.encDir("vm")
	want := randBytes(size)
	mustWrite(t, tf.m("vm/disk"), want)
	tf.waitReleased()
	dropMountCache(t, tf.m("vm/disk"))
	return tf, want
}
