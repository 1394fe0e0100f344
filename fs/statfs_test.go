package fs

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

func TestStorablePlainBlocks(t *testing.T) {
	for _, c := range []struct{ blocks, bsize, want uint64 }{
		{0, 4096, 0},
		{1, 4096, 0},      // the header region alone
		{2, 4096, 0},      // 4096 bytes after the header: less than one stored block
		{3, 4096, 1},      // 8192: one stored block of 4128
		{1001, 4096, 992}, // 1000 blocks after the header hold 1000*4096/4128 = 992.2
		{0, 0, 0},
		{1 << 62, 4096, (((1<<64)-1)/4096*4096 - 4096) / 4128 * 4096 / 4096},
	} {
		if got := storablePlainBlocks(c.blocks, c.bsize); got != c.want {
			t.Errorf("storablePlainBlocks(%d, %d) = %d, want %d", c.blocks, c.bsize, got, c.want)
		}
	}
}

// TestStatfsPromiseHolds fills the mount to what statfs says is available,
// with one fallocate of an encrypted file and of a plain one, on a small
// tmpfs (no metadata overhead of its own): statfs must count the format's
// overhead, or the fallocate gets ENOSPC.
func TestStatfsPromiseHolds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	for _, rel := range vmAndPlain {
		t.Run(rel, func(t *testing.T) {
			back := t.TempDir()
			if err := unix.Mount("tmpfs", back, "tmpfs", 0, "size=16m"); err != nil {
				t.Skipf("cannot mount tmpfs: %v", err)
			}
			t.Cleanup(func() { unix.Unmount(back, unix.MNT_DETACH) })
			tf := newTestFS(t, testOpts{back: back, journal: "-"})
			tf.encDir("vm")
			if err := os.Mkdir(tf.m("plain"), 0o755); err != nil {
				t.Fatal(err)
			}
			f := openRW(t, tf.m(rel), 0)
			var st unix.Statfs_t
			if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			avail := int64(st.Bavail) * st.Bsize
			if avail < 8<<20 {
				t.Fatalf("statfs promises %d bytes of 16 MiB", avail)
			}
			if err := unix.Fallocate(int(f.Fd()), 0, 0, avail); err != nil {
				t.Fatalf("fallocate of the %d bytes statfs promises: %v", avail, err)
			}
			// and it is no more than 1 % short of what really fits
			var bst unix.Statfs_t
			if err := unix.Statfs(back, &bst); err != nil {
				t.Fatal(err)
			}
			if left := int64(bst.Bavail) * bst.Bsize; left > int64(float64(avail)*0.01)+2*objcrypt.CipherBlockSize {
				t.Errorf("after filling what statfs promised, %d bytes are left on the backing store", left)
			}
		})
	}
}

// TestCopyFileRangeLimits compares copy_file_range and truncate past the
// largest file size with the backing filesystem: EFBIG, as ext4 answers.
func TestCopyFileRangeLimits(t *testing.T) {
	tf := newVMAndPlainFS(t)
	ref := t.TempDir()
	cases := []struct {
		name string
		off  int64
	}{
		{"at 2^62", 1 << 62},
		{"at 2^63-2", 1<<63 - 2},
		{"at 16 TiB", 16 << 40},
	}
	for _, dir := range []string{ref, tf.m("vm"), tf.m("plain")} {
		mustWrite(t, filepath.Join(dir, "src"), []byte("0123456789"))
	}
	do := func(dir string, off int64) error {
		src, err := os.Open(filepath.Join(dir, "src"))
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := os.OpenFile(filepath.Join(dir, "dst"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer dst.Close()
		var soff int64
		_, err = unix.CopyFileRange(int(src.Fd()), &soff, int(dst.Fd()), &off, 10, 0)
		return err
	}
	for _, c := range cases {
		want := do(ref, c.off)
		wantTrunc := os.Truncate(filepath.Join(ref, "src"), c.off)
		for _, dir := range []string{"vm", "plain"} {
			if got := os.Truncate(filepath.Join(tf.m(dir), "src"), c.off); outcome("", got) != outcome("", wantTrunc) {
				t.Errorf("truncate %s in %s: %v, backing filesystem %v", c.name, dir, got, wantTrunc)
			}
		}
		var errno syscall.Errno
		if !errors.As(want, &errno) {
			t.Fatalf("%s on the backing filesystem: %v, want an errno", c.name, want)
		}
		for _, dir := range []string{"vm", "plain"} {
			if got := do(tf.m(dir), c.off); !errors.Is(got, errno) {
				t.Errorf("%s in %s: %v, backing filesystem %v", c.name, dir, got, want)
			}
		}
	}
}
