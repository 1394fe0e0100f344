package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPathFDLimit walks many more files than the node tree may hold
// descriptors for: every getxattr must succeed, the descriptors held must
// come back under the limit, and a file unlinked while open (whose
// descriptor is the only way back to it) must keep working throughout.
func TestPathFDLimit(t *testing.T) {
	const limit, files = 64, 1500
	tf := newTestFS(t, testOpts{maxPathFDs: limit})
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	kept, err := os.OpenFile(tf.m("vm/kept"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	if err := os.Remove(tf.m("vm/kept")); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"vm", "plain"} {
		for i := range files / 2 {
			// Made on the backing store, so only the walk below looks them up.
			if err := os.WriteFile(filepath.Join(tf.back, dir, fmt.Sprintf("f%04d", i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := openDescriptors(t)
	for _, dir := range []string{"vm", "plain"} {
		for i := range files / 2 {
			p := tf.m(fmt.Sprintf("%s/f%04d", dir, i))
			if _, err := unix.Getxattr(p, "user.none", nil); err != unix.ENODATA {
				t.Fatalf("getxattr %s: %v, want ENODATA", p, err)
			}
		}
	}
	// Forgets arrive asynchronously after the evictor's invalidations.
	deadline := time.Now().Add(10 * time.Second)
	for tf.root.pathFDs.held() > limit && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if held := tf.root.pathFDs.held(); held > limit {
		t.Errorf("nodes hold %d descriptors after walking %d files, limit %d", held, files, limit)
	}
	if grown := openDescriptors(t) - before; grown > 2*limit {
		t.Errorf("the process holds %d more descriptors after walking %d files (limit %d)", grown, files, limit)
	}
	data := []byte("still reachable")
	if _, err := kept.WriteAt(data, 0); err != nil {
		t.Fatalf("write to the unlinked file: %v", err)
	}
	if err := kept.Truncate(5); err != nil {
		t.Fatalf("ftruncate of the unlinked file: %v", err)
	}
	if st, err := kept.Stat(); err != nil || st.Size() != 5 {
		t.Fatalf("fstat of the unlinked file: %v, %v; want 5 bytes", st, err)
	}
}

// openDescriptors counts the test process's open descriptors (the daemon
// runs in it).
func openDescriptors(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestPathFDLimitFor(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{
		{1024, 512},
		{20000, 10000},
		{1 << 20, 1 << 19},
		{300, minPathFDs},
		{1 << 62, 1 << 29}, // RLIM_INFINITY-sized limits stay an int
	} {
		if got := pathFDLimitFor(tc.nofile); got != tc.want {
			t.Errorf("pathFDLimitFor(%d) = %d, want %d", tc.nofile, got, tc.want)
		}
	}
}
