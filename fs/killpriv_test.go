package fs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nobody is the unprivileged caller of the privilege-clearing tests.
const nobody = 65534

// TestKillPriv checks that suid/sgid bits are cleared through the mount
// exactly when the backing filesystem clears them for the same caller and
// operation: the mount negotiates FUSE_HANDLE_KILLPRIV_V2, which leaves the
// clearing to the daemon, whose own backing I/O (as root) never clears them.
// Each case runs on a file in a plain directory of the backing filesystem
// (the reference), and on files in a plain and an encrypted directory of
// the mount; the expected mode is also written down, so a reference that
// changes its mind fails the test too.
func TestKillPriv(t *testing.T) {
	tf := newTestFS(t, testOpts{allowOther: true})
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("plain"), 0o777); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(filepath.Dir(tf.back), "reference")
	if err := os.Mkdir(ref, 0o777); err != nil {
		t.Fatal(err)
	}
	// nobody must reach the files: open up the temp directories' parents.
	for _, d := range []string{tf.back, tf.mnt, ref} {
		for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o777); err != nil {
				t.Fatal(err)
			}
		}
	}
	// nor can it run the test binary where go test leaves it
	child := filepath.Join(filepath.Dir(tf.back), "child.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(child, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		op       string // what the child does, see TestKillPrivChild
		uid      int    // caller (its group is the same number)
		owner    int    // file owner
		group    int    // file group
		mode     uint32 // before
		wantMode uint32 // after
	}{
		{"write clears suid and sgid+x", "write", nobody, 0, 0, 0o6777, 0o0777},
		{"write outside the group clears sgid without g+x", "write", nobody, 0, 0, 0o6766, 0o0766},
		{"write in the group keeps sgid without g+x", "write", nobody, 0, nobody, 0o6766, 0o2766},
		{"write by the owner clears suid", "write", nobody, nobody, nobody, 0o4755, 0o0755},
		{"direct write clears", "direct", nobody, 0, 0, 0o6777, 0o0777},
		{"O_TRUNC open clears", "trunc", nobody, 0, 0, 0o6777, 0o0777},
		{"ftruncate clears", "ftruncate", nobody, 0, 0, 0o6777, 0o0777},
		{"fallocate clears", "fallocate", nobody, 0, 0, 0o6777, 0o0777},
		{"chown by the owner clears", "chown", nobody, nobody, nobody, 0o6755, 0o0755},
		{"root's write keeps both", "write", 0, 0, 0, 0o6777, 0o6777},
		{"root's truncate keeps both", "ftruncate", 0, 0, 0, 0o6777, 0o6777},
		{"root's fallocate keeps both", "fallocate", 0, 0, 0, 0o6777, 0o6777},
		{"copy_file_range clears the destination", "copy", nobody, 0, 0, 0o6777, 0o0777},
		{"plain file mode untouched", "write", nobody, 0, 0, 0o0777, 0o0777},
		{"direct write outside the group clears sgid without g+x", "direct", nobody, 0, 0, 0o6766, 0o0766},
		{"direct write in the group keeps sgid without g+x", "direct", nobody, 0, nobody, 0o6766, 0o2766},
		{"direct write by the owner clears suid", "direct", nobody, nobody, nobody, 0o4755, 0o0755},
		{"direct write by root keeps both", "direct", 0, 0, 0, 0o6777, 0o6777},
		{"async direct write clears", "aio", nobody, 0, 0, 0o6777, 0o0777},
		{"async direct write by the owner clears suid", "aio", nobody, nobody, nobody, 0o4755, 0o0755},
		{"async direct write by root keeps both", "aio", 0, 0, 0, 0o6777, 0o6777},
		{"truncate by path clears", "truncate", nobody, 0, 0, 0o6777, 0o0777},
		{"chown by the owner in the group keeps sgid without g+x", "chown", nobody, nobody, nobody, 0o2744, 0o2744},
		{"chown by the owner outside the group clears sgid without g+x", "chown", nobody, nobody, 0, 0o2744, 0o0744},
		{"chown by root keeps sgid without g+x", "chown", 0, nobody, nobody, 0o6744, 0o2744},
		{"chown by root clears sgid with g+x", "chown", 0, nobody, nobody, 0o6754, 0o0754},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, dir := range []string{ref, tf.m("plain"), tf.m("vm")} {
				path := filepath.Join(dir, "f"+string(rune('a'+i)))
				mustWrite(t, path, make([]byte, 8192))
				if err := os.Chown(path, c.owner, c.group); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, os.FileMode(c.mode&0o777)|modeBits(c.mode)); err != nil {
					t.Fatal(err)
				}
				if got := fileMode(t, path); got != c.mode {
					t.Fatalf("%s: set mode %o, got %o", path, c.mode, got)
				}
				runKillPrivChild(t, child, c.op, path, c.uid)
				if got := fileMode(t, path); got != c.wantMode {
					t.Errorf("%s: after %s by uid %d: mode %o, want %o", path, c.op, c.uid, got, c.wantMode)
				}
			}
		})
	}
}

func modeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&syscall.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	return fm
}

func fileMode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mode & 0o7777
}

func runKillPrivChild(t *testing.T, bin, op, path string, uid int) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestKillPrivChild$")
	cmd.Env = append(os.Environ(), "CRYPTDS_KILLPRIV_CHILD="+op+":"+path)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child %s %s as %d: %v\n%s", op, path, uid, err, out)
	}
}

// TestKillPrivChild is TestKillPriv's child process: it runs one operation
// as the caller TestKillPriv chose.
func TestKillPrivChild(t *testing.T) {
	arg := os.Getenv("CRYPTDS_KILLPRIV_CHILD")
	if arg == "" {
		t.Skip("only run as TestKillPriv's child")
	}
	op, path, _ := strings.Cut(arg, ":")
	var err error
	switch op {
	case "write":
		err = writeAt(path, 0, []byte("x"), 0)
	case "direct":
		// a page from mmap is aligned for the reference's O_DIRECT
		var buf []byte
		if buf, err = unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE); err == nil {
			err = writeAt(path, syscall.O_DIRECT, buf, 4096)
		}
	case "aio":
		var fd int
		if fd, err = unix.Open(path, unix.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
			var ctx aioCtx
			if ctx, err = newAIO(4); err == nil {
				err = ctx.run([]aioOp{{write: true, fd: fd, buf: alignedBuf(4096), off: 4096}})
				ctx.destroy()
			}
			unix.Close(fd)
		}
	case "trunc":
		var fd int
		if fd, err = unix.Open(path, unix.O_WRONLY|unix.O_TRUNC, 0); err == nil {
			unix.Close(fd)
		}
	case "truncate":
		err = unix.Truncate(path, 100)
	case "ftruncate":
		var fd int
		if fd, err = unix.Open(path, unix.O_WRONLY, 0); err == nil {
			err = unix.Ftruncate(fd, 100)
			unix.Close(fd)
		}
	case "fallocate":
		var fd int
		if fd, err = unix.Open(path, unix.O_WRONLY, 0); err == nil {
			err = unix.Fallocate(fd, 0, 0, 16384)
			unix.Close(fd)
		}
	case "copy":
		var src, dst int
		if src, err = unix.Open(path, unix.O_RDONLY, 0); err == nil {
			if dst, err = unix.Open(path, unix.O_WRONLY, 0); err == nil {
				var off, doff int64 = 0, 8192
				_, err = unix.CopyFileRange(src, &off, dst, &doff, 100, 0)
				unix.Close(dst)
			}
			unix.Close(src)
		}
	case "chown":
		err = unix.Chown(path, -1, os.Getgid())
	default:
		t.Fatalf("unknown op %q", op)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", op, path, err)
	}
}

func writeAt(path string, flags int, b []byte, off int64) error {
	fd, err := unix.Open(path, unix.O_WRONLY|flags, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Pwrite(fd, b, off)
	return err
}

// TestKillPrivCapability checks the other half of the KILLPRIV_V2 contract:
// a file capability is dropped by a write through the mount, which relies
// on the backing filesystem dropping it on the daemon's own write.
func TestKillPrivCapability(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	// VFS_CAP_REVISION_2 with the effective flag and CAP_NET_RAW permitted
	capability := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, rel := range []string{"plain/f", "vm/f"} {
		mustWrite(t, tf.m(rel), make([]byte, 8192))
		if err := unix.Setxattr(tf.b(rel), "security.capability", capability, 0); err != nil {
			t.Fatalf("set a file capability on the backing file: %v", err)
		}
		if err := writeAt(tf.m(rel), 0, []byte("x"), 100); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Getxattr(tf.b(rel), "security.capability", nil); err != unix.ENODATA {
			t.Errorf("%s: file capability after a write through the mount: %v, want ENODATA", rel, err)
		}
	}
}
