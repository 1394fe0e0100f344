package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTmpfile opens unnamed files with O_TMPFILE in an encrypted and a
// plain directory, writes and reads them while they have no name, links
// them into place both ways callers do (linkat with AT_EMPTY_PATH, and
// through /proc/self/fd), and checks the content through a fresh open, the
// kind of the backing file, that O_EXCL forbids the link, and that an
// unlinked one leaves nothing behind.
func TestTmpfile(t *testing.T) {
	tf := newVMAndPlainFS(t)
	data := randBytes(3*4096 + 777)
	cases := []struct {
		dir       string
		encrypted bool
		link      func(fd int, dst string) error
	}{
		{"vm", true, linkEmptyPath},
		{"vm", true, linkProc},
		{"plain", false, linkEmptyPath},
		{"plain", false, linkProc},
	}
	for i, c := range cases {
		fd, err := unix.Open(tf.m(c.dir), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o640)
		if err != nil {
			t.Fatalf("O_TMPFILE in %s: %v", c.dir, err)
		}
		f := os.NewFile(uintptr(fd), "tmpfile")
		if _, err := f.WriteAt(data, 0); err != nil {
			t.Fatalf("%s: write: %v", c.dir, err)
		}
		if _, err := f.WriteAt([]byte("edge"), 4094); err != nil {
			t.Fatalf("%s: write across a block edge: %v", c.dir, err)
		}
		want := append([]byte(nil), data...)
		copy(want[4094:], "edge")
		got := make([]byte, len(want)+10)
		if n, _ := f.ReadAt(got, 0); !bytes.Equal(got[:n], want) {
			t.Errorf("%s: unnamed file reads %d bytes that differ from those written", c.dir, n)
		}
		if st, err := f.Stat(); err != nil || st.Size() != int64(len(want)) || st.Mode().Perm() != 0o640 {
			t.Errorf("%s: unnamed file stat %v, %v; want %d bytes, mode 0640", c.dir, st, err, len(want))
		}
		name := filepath.Join(c.dir, "linked"+string(rune('0'+i)))
		if err := c.link(fd, tf.m(name)); err != nil {
			t.Fatalf("link %s: %v", name, err)
		}
		f.Close()
		tf.waitReleased()
		dropMountCache(t, tf.m(name))
		checkContent(t, tf.m(name), want)
		if got := isEncryptedBacking(t, tf.b(name)); got != c.encrypted {
			t.Errorf("%s: backing file encrypted %v, want %v", name, got, c.encrypted)
		}
	}

	// An encrypted unnamed file is never linked out of its VM (it would be
	// refused there anyway: an object is served only in its own VM).
	fd, err := unix.Open(tf.m("vm"), unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, data, 0); err != nil {
		t.Fatal(err)
	}
	if err := linkEmptyPath(fd, tf.m("plain/from-vm")); !errors.Is(err, unix.EXDEV) {
		t.Errorf("linking an encrypted unnamed file into a plain directory: %v, want EXDEV", err)
	}
	unix.Close(fd)

	// O_EXCL: the file can never get a name.
	fd, err = unix.Open(tf.m("vm"), unix.O_TMPFILE|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := linkProc(fd, tf.m("vm/never")); !errors.Is(err, unix.ENOENT) {
		t.Errorf("linking an O_EXCL unnamed file: %v, want ENOENT", err)
	}
	unix.Close(fd)

	// One never linked leaves no backing file.
	before := backingNames(t, tf.b("vm"))
	fd, err = unix.Open(tf.m("vm"), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Pwrite(fd, data, 0)
	unix.Close(fd)
	tf.waitReleased()
	if after := backingNames(t, tf.b("vm")); len(after) != len(before) {
		t.Errorf("backing directory went from %v to %v", before, after)
	}
}

func linkEmptyPath(fd int, dst string) error {
	return unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
}

func linkProc(fd int, dst string) error {
	return unix.Linkat(unix.AT_FDCWD, procPath(fd), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
}

func backingNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
