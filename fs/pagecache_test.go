package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPageCacheKeptAcrossWrites reads an encrypted file into the mount's
// page cache, writes one block through the same handle, and reads another
// block again: it must come from the page cache (no block decrypted),
// while the written block reads back new.
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
	if n := tf.root.Stats().BlocksDecrypted - before; n != 0 {
		t.Errorf("the read after a write decrypted %d blocks; want 0 (all from the page cache)", n)
	}
}

// TestPageCacheDirectWrites checks that an O_DIRECT write through one
// handle is seen by a buffered handle that had the range cached, for
// plain and encrypted files, and that the daemon drops the written range
// only while a buffered handle is open.
func TestPageCacheDirectWrites(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vm/disk", "plain/disk"} {
		t.Run(filepath.Dir(name), func(t *testing.T) {
			want := randBytes(64 << 10)
			mustWrite(t, tf.m(name), want)
			buffered := openRW(t, tf.m(name), 0)
			readAll(t, buffered, len(want))
			direct := openRW(t, tf.m(name), syscall.O_DIRECT)
			block := randBytes(4096)
			drops := tf.root.Stats().CacheDrops
			if _, err := direct.WriteAt(block, 5*4096); err != nil {
				t.Fatal(err)
			}
			copy(want[5*4096:], block)
			if got := readAll(t, buffered, len(want)); !bytes.Equal(got, want) {
				t.Error("the buffered handle reads stale bytes after a direct write")
			}
			if n := tf.root.Stats().CacheDrops - drops; n != 1 {
				t.Errorf("%d cache drops for a direct write with a buffered handle open, want 1", n)
			}
			buffered.Close()
			waitFor(t, "the buffered handle's release", func() bool { return nodeOf(t, tf, name).bufferedOpen.Load() == 0 })
			drops = tf.root.Stats().CacheDrops
			if _, err := direct.WriteAt(block, 6*4096); err != nil {
				t.Fatal(err)
			}
			if n := tf.root.Stats().CacheDrops - drops; n != 0 {
				t.Errorf("%d cache drops for a direct write with no buffered handle open, want 0", n)
			}
		})
	}
}

// TestPageCacheCloseToOpen changes a plain file on the backing store
// behind the mount: a handle opened afterwards reads the new bytes.
func TestPageCacheCloseToOpen(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	old, fresh := bytes.Repeat([]byte("a"), 8192), bytes.Repeat([]byte("b"), 8192)
	mustWrite(t, tf.m("config"), old)
	if got := mustRead(t, tf.m("config")); !bytes.Equal(got, old) {
		t.Fatal("first read differs")
	}
	mustWrite(t, tf.b("config"), fresh)
	if got := mustRead(t, tf.m("config")); !bytes.Equal(got, fresh) {
		t.Error("a new open reads the bytes cached before the backing file changed")
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
