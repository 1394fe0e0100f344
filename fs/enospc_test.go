package fs

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestENOSPC uses a 2 MiB tmpfs as backing store: a write that runs out of
// space returns ENOSPC, and afterwards every block of the object still
// authenticates (data acknowledged before the failure reads back).
func TestENOSPC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	back := t.TempDir()
	if err := unix.Mount("tmpfs", back, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(back, unix.MNT_DETACH) })
	if err := unix.Setxattr(back, "user.probe", []byte("1"), 0); err != nil {
		t.Skipf("tmpfs without user xattrs on this kernel: %v", err)
	}
	unix.Removexattr(back, "user.probe")
	tf := newTestFS(t, testOpts{back: back})
	tf.encDir("vm")
	f := openRW(t, tf.m("vm/disk"), syscall.O_DIRECT)
	good := randBytes(1 << 20)
	if _, err := f.WriteAt(good, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// overwrite the tail unaligned and grow past the space left
	big := randBytes(2 << 20)
	_, err := f.WriteAt(big, (1<<20)-1000)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write beyond space: %v, want ENOSPC", err)
	}
	buf := make([]byte, 1<<20)
	n, err := f.ReadAt(buf, 0)
	if err != nil && n != len(buf) {
		t.Fatalf("read after ENOSPC: %d %v", n, err)
	}
	// the failed write may be lost, but what was there reads back and
	// nothing fails authentication
	if !bytes.Equal(buf[:(1<<20)-1000], good[:(1<<20)-1000]) {
		t.Fatal("data before the failed write changed")
	}
	if tf.root.Stats().AuthFailures != 0 {
		t.Fatal("a block failed authentication after ENOSPC")
	}
	st, _ := f.Stat()
	if st.Size() != 1<<20 {
		t.Fatalf("size after failed write %d, want %d", st.Size(), 1<<20)
	}
	// the same with a whole-block write (the parallel path): no half block
	// is left, everything that is there reads back and authenticates
	aligned := randBytes(2 << 20)
	if _, err := f.WriteAt(aligned, 1<<20); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("whole-block write beyond space: %v, want ENOSPC", err)
	}
	st, _ = f.Stat()
	all := make([]byte, st.Size())
	if n, err := f.ReadAt(all, 0); err != nil && n != len(all) {
		t.Fatalf("read after whole-block ENOSPC: %d of %d, %v", n, len(all), err)
	}
	if !bytes.Equal(all[:(1<<20)-1000], good[:(1<<20)-1000]) {
		t.Fatal("data before the failed whole-block write changed")
	}
	if tf.root.Stats().AuthFailures != 0 {
		t.Fatal("a block failed authentication after a whole-block ENOSPC")
	}
	// small writes into a full filesystem still report ENOSPC, not EIO
	g, err := os.Create(tf.m("vm/other"))
	if err == nil {
		_, err = g.Write(randBytes(1 << 20))
		g.Close()
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second file: %v, want ENOSPC", err)
	}
}
