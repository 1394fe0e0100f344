package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPageCacheDirectWrites checks that an O_DIRECT write through one
// handle is seen by a buffered handle that had the range cached, for
// plain and encrypted files.
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
			if _, err := direct.WriteAt(block, 5*4096); err != nil {
				t.Fatal(err)
			}
			copy(want[5*4096:], block)
			if got := readAll(t, buffered, len(want)); !bytes.Equal(got, want) {
				t.Error("the buffered handle reads stale bytes after a direct write")
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
