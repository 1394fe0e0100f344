package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
)

// TestPageCacheKeptAcrossWrites reads an encrypted file into the mount's
// page cache, writes one block through the same handle, and reads the
// file again through it and through a new handle: every page must come
// from the page cache (no block decrypted), the written one with its new
// bytes.
func TestPageCacheKeptAcrossWrites(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	want := randBytes(64 << 10)
	mustWrite(t, tf.m("vm/disk"), want)
	f := openRW(t, tf.m("vm/disk"), 0)
	if got := readAll(t, f, len(want)); !bytes.Equal(got, want) {
		t.Fatal("first read differs from what was written")
	}
	block := randBytes(4096)
	if _, err := f.WriteAt(block, 3*4096); err != nil {
		t.Fatal(err)
	}
	copy(want[3*4096:], block)
	if _, err := os.Stat(tf.m("vm/disk")); err != nil { // a GETATTR after the write
		t.Fatal(err)
	}
	before := tf.root.Stats().BlocksDecrypted
	if got := readAll(t, f, len(want)); !bytes.Equal(got, want) {
		t.Fatal("read after the write differs")
	}
	if got := mustRead(t, tf.m("vm/disk")); !bytes.Equal(got, want) {
		t.Fatal("read through a new handle differs")
	}
	if n := tf.root.Stats().BlocksDecrypted - before; n != 0 {
		t.Errorf("reads after a write decrypted %d blocks; want 0 (all from the page cache)", n)
	}
}

// TestPageCacheOpensDuringWrites writes a growing counter over one page
// through a buffered handle while other goroutines open the file, read
// the page and close it. A page dropped while its WRITE is on its way to
// the daemon and read again before the daemon applied it would cache an
// older count: no reader may ever see the count go back, and at the end a
// new handle must read the last count.
func TestPageCacheOpensDuringWrites(t *testing.T) {
	tf := newVMAndPlainFS(t)
	for _, name := range vmAndPlain {
		t.Run(filepath.Dir(name), func(t *testing.T) {
			page := func(i uint64) []byte {
				return bytes.Repeat(binary.LittleEndian.AppendUint64(nil, i), 4096/8)
			}
			mustWrite(t, tf.m(name), make([]byte, 64<<10))
			w := openRW(t, tf.m(name), 0)
			const writes = 3000
			var last atomic.Uint64
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 4096)
					var seen uint64
					for last.Load() < writes {
						f, err := os.Open(tf.m(name))
						if err != nil {
							t.Error(err)
							return
						}
						_, err = f.ReadAt(buf, 4*4096)
						f.Close()
						if err != nil {
							t.Error(err)
							return
						}
						got := binary.LittleEndian.Uint64(buf)
						if got < seen {
							t.Errorf("count went back from %d to %d", seen, got)
							return
						}
						seen = got
					}
				}()
			}
			for i := uint64(1); i <= writes; i++ {
				if _, err := w.WriteAt(page(i), 4*4096); err != nil {
					t.Fatal(err)
				}
				last.Store(i)
			}
			wg.Wait()
			if got := mustRead(t, tf.m(name)); !bytes.Equal(got[4*4096:5*4096], page(writes)) {
				t.Errorf("a new handle reads count %d, want %d", binary.LittleEndian.Uint64(got[4*4096:]), writes)
			}
		})
	}
}

// TestPageCacheDirectWrites checks that an O_DIRECT write through one
// handle is seen by a buffered handle that had the range cached (open, or
// closed before the write), for plain and encrypted files.
func TestPageCacheDirectWrites(t *testing.T) {
	tf := newVMAndPlainFS(t)
	for _, name := range vmAndPlain {
		for _, keep := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/buffered-open=%v", filepath.Dir(name), keep), func(t *testing.T) {
				want := randBytes(64 << 10)
				mustWrite(t, tf.m(name), want)
				buffered := openRW(t, tf.m(name), 0)
				readAll(t, buffered, len(want))
				if !keep {
					buffered.Close()
				}
				direct := openRW(t, tf.m(name), syscall.O_DIRECT)
				block := randBytes(4096)
				if _, err := direct.WriteAt(block, 5*4096); err != nil {
					t.Fatal(err)
				}
				copy(want[5*4096:], block)
				if !keep {
					buffered = openRW(t, tf.m(name), 0)
				}
				if got := readAll(t, buffered, len(want)); !bytes.Equal(got, want) {
					t.Error("the buffered handle reads stale bytes after a direct write")
				}
			})
		}
	}
}

// TestPageCacheDirectWriteRacingReads writes a growing counter over one
// page through an O_DIRECT handle while a goroutine keeps reading the page
// through a buffered handle: a read that reached the daemon before a write
// caches the old count after the kernel dropped the range, so after every
// write returns, a buffered read must see its count.
func TestPageCacheDirectWriteRacingReads(t *testing.T) {
	tf := newVMAndPlainFS(t)
	for _, name := range vmAndPlain {
		t.Run(filepath.Dir(name), func(t *testing.T) {
			mustWrite(t, tf.m(name), make([]byte, 64<<10))
			direct := openRW(t, tf.m(name), syscall.O_DIRECT)
			check := openRW(t, tf.m(name), 0)
			racer := openRW(t, tf.m(name), 0)
			inBackground(t, 1, func() bool {
				racer.ReadAt(make([]byte, 4096), 4*4096)
				return true
			})
			buf := make([]byte, 4096)
			for i := uint64(1); i <= 2000; i++ {
				page := bytes.Repeat(binary.LittleEndian.AppendUint64(nil, i), 4096/8)
				if _, err := direct.WriteAt(page, 4*4096); err != nil {
					t.Fatal(err)
				}
				if _, err := check.ReadAt(buf, 4*4096); err != nil {
					t.Fatal(err)
				}
				if got := binary.LittleEndian.Uint64(buf); got != i {
					t.Fatalf("after direct write %d a buffered read sees %d", i, got)
				}
			}
		})
	}
}

// TestPageCacheCloseToOpen changes a file on the backing store behind the
// mount after its pages were cached: a handle opened afterwards sees the
// change (new bytes of a plain file, EIO for a tampered encrypted block).
func TestPageCacheCloseToOpen(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	t.Run("plain", func(t *testing.T) {
		old, fresh := bytes.Repeat([]byte("a"), 8192), bytes.Repeat([]byte("b"), 8192)
		mustWrite(t, tf.m("config"), old)
		if got := mustRead(t, tf.m("config")); !bytes.Equal(got, old) {
			t.Fatal("first read differs")
		}
		// The release of the writing handle (asynchronous to close)
		// records the backing file the cache matches.
		waitFor(t, "the writer's release", func() bool { return len(tf.root.OpenFiles()) == 0 })
		mustWrite(t, tf.b("config"), fresh)
		if got := mustRead(t, tf.m("config")); !bytes.Equal(got, fresh) {
			t.Error("a new open reads the bytes cached before the backing file changed")
		}
	})
	t.Run("encrypted", func(t *testing.T) {
		data := randBytes(8 * 4096)
		mustWrite(t, tf.m("vm/nvram"), data)
		if got := mustRead(t, tf.m("vm/nvram")); !bytes.Equal(got, data) {
			t.Fatal("first read differs")
		}
		tf.waitReleased()
		flipBackingByte(t, tf.b("vm/nvram"), int64(objcrypt.CipherOffsetOfBlock(2))+100)
		f, err := os.Open(tf.m("vm/nvram"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.ReadAt(make([]byte, 4096), 2*4096); !errors.Is(err, syscall.EIO) {
			t.Errorf("read of a block tampered behind the mount: %v, want EIO", err)
		}
	})
}

// flipBackingByte corrupts one byte of a backing file.
func flipBackingByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, f *os.File, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, 0)
	if err != nil && got != n {
		t.Fatal(err)
	}
	return buf[:got]
}

// nodeOf finds the node of a mount path (one directory deep at most).
func nodeOf(t *testing.T, tf *testFS, rel string) *node {
	t.Helper()
	in := tf.root.EmbeddedInode()
	dir, base := filepath.Split(rel)
	if dir != "" {
		in = in.GetChild(filepath.Clean(dir))
	}
	if in != nil {
		in = in.GetChild(base)
	}
	if in == nil {
		t.Fatalf("%s: no inode", rel)
	}
	n, ok := asNode(in.Operations())
	if !ok {
		t.Fatalf("%s: not a cryptds node", rel)
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 500 {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
