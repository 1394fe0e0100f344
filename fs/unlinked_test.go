package fs

import (
	"bytes"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUnlinkedButOpen uses files through descriptors opened before their
// names went away (unlink, rename over them) and a directory removed
// while open, as programs do with temporary files: fstat, ftruncate into
// a block, fallocate, SEEK_END, fchmod, fsetxattr, write and read must all
// keep working on the inode, plain and encrypted alike.
func TestUnlinkedButOpen(t *testing.T) {
	tf := newVMAndPlainFS(t)
	for _, dir := range []string{"vm", "plain"} {
		for _, how := range []string{"unlink", "rename over"} {
			t.Run(dir+"/"+how, func(t *testing.T) {
				// Created and unlinked at once, before anything but the
				// create has touched the inode, as mkstemp+unlink does.
				path := tf.m(dir + "/tmp-" + how)
				f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				switch how {
				case "unlink":
					if err := os.Remove(path); err != nil {
						t.Fatal(err)
					}
				case "rename over":
					other := tf.m(dir + "/other")
					mustWrite(t, other, []byte("replacement"))
					if err := os.Rename(other, path); err != nil {
						t.Fatal(err)
					}
				}
				data := randBytes(3*4096 + 10)
				if _, err := f.WriteAt(data, 0); err != nil {
					t.Fatalf("write: %v", err)
				}
				if st, err := f.Stat(); err != nil || st.Size() != int64(len(data)) {
					t.Fatalf("fstat: %v, %v; want %d bytes", st, err, len(data))
				}
				if err := f.Truncate(2*4096 + 5); err != nil {
					t.Fatalf("ftruncate: %v", err)
				}
				data = data[:2*4096+5]
				if err := unix.Fallocate(int(f.Fd()), 0, 0, 4*4096); err != nil {
					t.Fatalf("fallocate: %v", err)
				}
				data = append(data, make([]byte, 4*4096-len(data))...)
				if end, err := f.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
					t.Fatalf("SEEK_END: %d, %v; want %d", end, err, len(data))
				}
				if err := f.Chmod(0o600); err != nil {
					t.Fatalf("fchmod: %v", err)
				}
				if err := unix.Fsetxattr(int(f.Fd()), "user.note", []byte("v"), 0); err != nil {
					t.Fatalf("fsetxattr: %v", err)
				}
				if _, err := f.WriteAt([]byte("tail"), int64(len(data))); err != nil {
					t.Fatalf("write: %v", err)
				}
				data = append(data, "tail"...)
				if got := readAll(t, f, len(data)); !bytes.Equal(got, data) {
					t.Errorf("read %d bytes that differ from the %d expected", len(got), len(data))
				}
			})
		}
	}
	d := tf.m("vm/gone")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	if err := os.Remove(d); err != nil {
		t.Fatal(err)
	}
	if _, err := df.Stat(); err != nil {
		t.Errorf("fstat of a removed directory still open: %v", err)
	}
}
