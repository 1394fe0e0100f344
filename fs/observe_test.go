package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestObserve checks every observed op reaches Config.Observe with a
// positive duration, for encrypted and plain files.
func TestObserve(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mount tests need root")
	}
	var mu sync.Mutex
	seen := map[string]int{}
	back, mnt := t.TempDir(), t.TempDir()
	r, err := NewRoot(Config{Backing: back, Keys: newFakeKeys(), DatastoreID: "ds1",
		Observe: func(op string, d time.Duration) {
			if d <= 0 {
				t.Errorf("%s: duration %v", op, d)
			}
			mu.Lock()
			seen[op]++
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := MountRoot(mnt, r, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50 && srv.Unmount() != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	tf := &testFS{t: t, back: back, mnt: mnt}
	tf.encDir("vm1")
	data := randBytes(10000)
	for _, rel := range []string{"vm1/disk", "plain"} {
		f, err := os.Create(filepath.Join(mnt, rel))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Stat(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got := mustRead(t, filepath.Join(mnt, rel)); !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs", rel)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "vm1", "nope")); !os.IsNotExist(err) {
		t.Fatalf("stat missing: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, op := range []string{OpLookup, OpGetattr, OpOpen, OpCreate, OpRead, OpWrite, OpFsync} {
		if seen[op] == 0 {
			t.Errorf("op %s never observed (seen %v)", op, seen)
		}
	}
}
