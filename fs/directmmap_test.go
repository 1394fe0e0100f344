package fs

import (
	"bytes"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectMmap maps a file opened O_DIRECT shared and writable, as ext4
// allows and fsx-style tools and some databases do, and checks that the
// mapping and direct I/O on the same handle see each other's writes. The
// mapping is touched in a child process (see TestSharedMmap).
func TestDirectMmap(t *testing.T) {
	tf := newVMAndPlainFS(t)
	for _, rel := range append([]string{"ref"}, vmAndPlain...) {
		path := tf.m(rel)
		if rel == "ref" {
			path = tf.b("ref") // the backing ext4 itself
		}
		t.Run(rel, func(t *testing.T) {
			mustWrite(t, path, bytes.Repeat([]byte{'.'}, 4*4096))
			cmd := exec.Command(os.Args[0], "-test.run=^TestDirectMmapChild$")
			cmd.Env = append(os.Environ(), "CRYPTDS_DIRECT_MMAP_CHILD="+path)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			got := mustRead(t, path)
			if string(got[100:111]) != "via mapping" || string(got[2*4096:2*4096+10]) != "via direct" {
				t.Errorf("after the child: %q / %q", got[100:111], got[2*4096:2*4096+10])
			}
		})
	}
}

// TestDirectMmapChild is TestDirectMmap's child process.
func TestDirectMmapChild(t *testing.T) {
	path := os.Getenv("CRYPTDS_DIRECT_MMAP_CHILD")
	if path == "" {
		t.Skip("only run as TestDirectMmap's child")
	}
	fd, err := unix.Open(path, unix.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap MAP_SHARED of an O_DIRECT handle: %v", err)
	}
	defer unix.Munmap(m)
	// the mapping sees the old content, and its writes reach direct reads
	if m[0] != '.' {
		t.Fatalf("mapping reads %q", m[0])
	}
	copy(m[100:], "via mapping")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	buf := alignedBuf(4096)
	if _, err := unix.Pread(fd, buf, 0); err != nil {
		t.Fatal(err)
	}
	if string(buf[100:111]) != "via mapping" {
		t.Errorf("direct read after msync: %q", buf[100:111])
	}
	// a direct write reaches the mapping, including a page it has cached
	_ = m[2*4096]
	copy(buf, bytes.Repeat([]byte{'x'}, 4096))
	copy(buf, "via direct")
	if _, err := unix.Pwrite(fd, buf, 2*4096); err != nil {
		t.Fatal(err)
	}
	if string(m[2*4096:2*4096+10]) != "via direct" {
		t.Errorf("mapping after a direct write: %q", m[2*4096:2*4096+10])
	}
}
