package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// posixStep is one operation of TestMatchesBackingFilesystem, run in a
// directory; it returns what a caller would observe (sizes, modes, bytes,
// which times changed) or the error.
type posixStep struct {
	name string
	do   func(d string) (string, error)
}

// outcome renders a step's result so two directories can be compared: the
// errno name of an error, or ok and the observation.
func outcome(s string, err error) string {
	if err == nil {
		return "ok " + s
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return "error " + err.Error()
}

// statLine is what the steps compare of a stat: type and mode, link count,
// owner and size (inode numbers and times differ between any two trees).
func statLine(p string, follow bool) (string, error) {
	var st unix.Stat_t
	var err error
	if follow {
		err = unix.Stat(p, &st)
	} else {
		err = unix.Lstat(p, &st)
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("mode=%o nlink=%d uid=%d gid=%d size=%d", st.Mode, st.Nlink, st.Uid, st.Gid, st.Size), nil
}

// timesChanged runs fn and reports which of mtime and ctime of p it
// changed ("mc", "m-", "-c" or "--"). atime is left out: reads served
// from the mount's page cache never reach the backing file.
func timesChanged(p string, fn func() error) (string, error) {
	var before, after unix.Stat_t
	if err := unix.Lstat(p, &before); err != nil {
		return "", err
	}
	time.Sleep(20 * time.Millisecond) // past a coarse timestamp tick
	if err := fn(); err != nil {
		return "", err
	}
	if err := unix.Lstat(p, &after); err != nil {
		return "", err
	}
	r := []byte("--")
	if after.Mtim != before.Mtim {
		r[0] = 'm'
	}
	if after.Ctim != before.Ctim {
		r[1] = 'c'
	}
	return string(r), nil
}

func writeNew(p string, data []byte) error { return os.WriteFile(p, data, 0o644) }

func pwriteAt(p string, off int64, data []byte) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(data, off)
	return err
}

func openClose(p string, flags int) error {
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func seekIn(p string, off int64, whence int) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	n, err := unix.Seek(int(f.Fd()), off, whence)
	return fmt.Sprint(n), err
}

// posixSteps build a small tree and then probe the semantics a POSIX
// conformance suite checks: errno on every refusal, link counts, modes,
// which times an operation marks, sparse files, O_APPEND, xattr flags.
// Each step sees the state the steps before it left.
func posixSteps() []posixStep {
	j := filepath.Join
	none := func(err error) (string, error) { return "", err }
	stat := func(p string) (string, error) { return statLine(p, true) }
	return []posixStep{
		{"mkdir", func(d string) (string, error) { return none(os.Mkdir(j(d, "d"), 0o755)) }},
		{"mkdir existing", func(d string) (string, error) { return none(os.Mkdir(j(d, "d"), 0o755)) }},
		{"create", func(d string) (string, error) { return none(writeNew(j(d, "d/f"), []byte("hello"))) }},
		{"stat", func(d string) (string, error) { return stat(j(d, "d/f")) }},
		{"O_EXCL on existing", func(d string) (string, error) {
			return none(openClose(j(d, "d/f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY))
		}},
		{"open dir for writing", func(d string) (string, error) { return none(openClose(j(d, "d"), unix.O_WRONLY)) }},
		{"path through a file", func(d string) (string, error) { return none(openClose(j(d, "d/f/x"), unix.O_RDONLY)) }},
		{"O_DIRECTORY on a file", func(d string) (string, error) {
			return none(openClose(j(d, "d/f"), unix.O_RDONLY|unix.O_DIRECTORY))
		}},
		{"dir times on create", func(d string) (string, error) {
			return timesChanged(j(d, "d"), func() error { return writeNew(j(d, "d/g"), nil) })
		}},
		{"dir times on unlink", func(d string) (string, error) {
			return timesChanged(j(d, "d"), func() error { return os.Remove(j(d, "d/g")) })
		}},
		{"times on write", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return pwriteAt(j(d, "d/f"), 1, []byte("X")) })
		}},
		{"times on shrinking truncate", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return os.Truncate(j(d, "d/f"), 3) })
		}},
		{"times on same-size truncate", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return os.Truncate(j(d, "d/f"), 3) })
		}},
		{"times on O_TRUNC of an empty file", func(d string) (string, error) {
			if err := writeNew(j(d, "d/e"), nil); err != nil {
				return "", err
			}
			return timesChanged(j(d, "d/e"), func() error { return openClose(j(d, "d/e"), unix.O_WRONLY|unix.O_TRUNC) })
		}},
		{"times on chmod", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return os.Chmod(j(d, "d/f"), 0o600) })
		}},
		{"times on chown", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return os.Chown(j(d, "d/f"), 65534, 65534) })
		}},
		{"times on link", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return os.Link(j(d, "d/f"), j(d, "d/h")) })
		}},
		{"ctime on rename", func(d string) (string, error) {
			var before, after unix.Stat_t
			if err := unix.Lstat(j(d, "d/h"), &before); err != nil {
				return "", err
			}
			time.Sleep(20 * time.Millisecond)
			if err := os.Rename(j(d, "d/h"), j(d, "d/h2")); err != nil {
				return "", err
			}
			err := unix.Lstat(j(d, "d/h2"), &after)
			return fmt.Sprint(after.Ctim != before.Ctim), err
		}},
		{"times on setxattr", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return unix.Setxattr(j(d, "d/f"), "user.x", []byte("1"), 0) })
		}},
		{"times on empty write", func(d string) (string, error) {
			return timesChanged(j(d, "d/f"), func() error { return pwriteAt(j(d, "d/f"), 0, nil) })
		}},
		{"content", func(d string) (string, error) {
			b, err := os.ReadFile(j(d, "d/f"))
			return fmt.Sprintf("%q", b), err
		}},
		{"utimes", func(d string) (string, error) {
			ts := []unix.Timespec{unix.NsecToTimespec(1e18), unix.NsecToTimespec(2e18)}
			if err := unix.UtimesNano(j(d, "d/f"), ts); err != nil {
				return "", err
			}
			var st unix.Stat_t
			err := unix.Stat(j(d, "d/f"), &st)
			return fmt.Sprint(st.Atim.Nano(), st.Mtim.Nano()), err
		}},
		{"symlink", func(d string) (string, error) {
			if err := os.Symlink("f", j(d, "d/s")); err != nil {
				return "", err
			}
			target, err := os.Readlink(j(d, "d/s"))
			if err != nil {
				return "", err
			}
			l, err := statLine(j(d, "d/s"), false)
			return target + " " + l, err
		}},
		{"symlink existing", func(d string) (string, error) { return none(os.Symlink("f", j(d, "d/s"))) }},
		{"lchown", func(d string) (string, error) {
			if err := os.Lchown(j(d, "d/s"), 1, 2); err != nil {
				return "", err
			}
			l, err := statLine(j(d, "d/s"), false)
			if err != nil {
				return "", err
			}
			f, err := stat(j(d, "d/f"))
			return l + " / " + f, err
		}},
		{"O_EXCL on a symlink", func(d string) (string, error) {
			return none(openClose(j(d, "d/s"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY))
		}},
		{"O_NOFOLLOW on a symlink", func(d string) (string, error) {
			return none(openClose(j(d, "d/s"), unix.O_RDONLY|unix.O_NOFOLLOW))
		}},
		{"O_CREAT through a dangling symlink", func(d string) (string, error) {
			if err := os.Symlink("target", j(d, "d/dl")); err != nil {
				return "", err
			}
			if err := openClose(j(d, "d/dl"), unix.O_CREAT|unix.O_WRONLY); err != nil {
				return "", err
			}
			return stat(j(d, "d/target"))
		}},
		{"rmdir non-empty", func(d string) (string, error) { return none(unix.Rmdir(j(d, "d"))) }},
		{"rename dir over non-empty dir", func(d string) (string, error) {
			for _, p := range []string{"d2", "d/sub"} {
				if err := os.Mkdir(j(d, p), 0o755); err != nil {
					return "", err
				}
			}
			if err := writeNew(j(d, "d/sub/x"), []byte("x")); err != nil {
				return "", err
			}
			return none(os.Rename(j(d, "d2"), j(d, "d")))
		}},
		{"rename file over dir", func(d string) (string, error) { return none(os.Rename(j(d, "d/f"), j(d, "d/sub"))) }},
		{"rename dir over file", func(d string) (string, error) { return none(os.Rename(j(d, "d/sub"), j(d, "d/f"))) }},
		{"rename dir into itself", func(d string) (string, error) { return none(os.Rename(j(d, "d"), j(d, "d/sub/in"))) }},
		{"rename onto itself", func(d string) (string, error) {
			if err := os.Rename(j(d, "d/f"), j(d, "d/f")); err != nil {
				return "", err
			}
			return stat(j(d, "d/f"))
		}},
		{"rename onto a hard link of itself", func(d string) (string, error) {
			if err := os.Rename(j(d, "d/f"), j(d, "d/h2")); err != nil {
				return "", err
			}
			_, err := os.Lstat(j(d, "d/f"))
			s, err2 := stat(j(d, "d/h2"))
			return fmt.Sprint(err == nil, " ", s), err2
		}},
		{"directory link count", func(d string) (string, error) {
			for _, p := range []string{"d/sub/a", "d/sub/b"} {
				if err := os.Mkdir(j(d, p), 0o755); err != nil {
					return "", err
				}
			}
			return stat(j(d, "d/sub"))
		}},
		{"unlink a dir", func(d string) (string, error) { return none(unix.Unlink(j(d, "d/sub"))) }},
		{"rmdir a file", func(d string) (string, error) { return none(unix.Rmdir(j(d, "d/h2"))) }},
		{"rmdir dot", func(d string) (string, error) { return none(unix.Rmdir(j(d, "d/sub/a") + "/.")) }},
		{"link a dir", func(d string) (string, error) { return none(os.Link(j(d, "d/sub"), j(d, "d/sl"))) }},
		{"link onto existing", func(d string) (string, error) { return none(os.Link(j(d, "d/h2"), j(d, "d/s"))) }},
		{"mkfifo", func(d string) (string, error) {
			if err := unix.Mkfifo(j(d, "d/fifo"), 0o640); err != nil {
				return "", err
			}
			return stat(j(d, "d/fifo"))
		}},
		{"mknod char device", func(d string) (string, error) {
			if err := unix.Mknod(j(d, "d/null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
				return "", err
			}
			var st unix.Stat_t
			err := unix.Stat(j(d, "d/null"), &st)
			return fmt.Sprintf("mode=%o rdev=%d", st.Mode, st.Rdev), err
		}},
		{"mknod socket", func(d string) (string, error) {
			if err := unix.Mknod(j(d, "d/sock"), unix.S_IFSOCK|0o600, 0); err != nil {
				return "", err
			}
			return stat(j(d, "d/sock"))
		}},
		{"NAME_MAX name", func(d string) (string, error) {
			return none(writeNew(j(d, "d", strings.Repeat("n", 255)), []byte("x")))
		}},
		{"name longer than NAME_MAX", func(d string) (string, error) {
			return none(writeNew(j(d, "d", strings.Repeat("n", 256)), []byte("x")))
		}},
		{"setgid directory", func(d string) (string, error) {
			if err := os.Mkdir(j(d, "d/sg"), 0o755); err != nil {
				return "", err
			}
			if err := os.Chown(j(d, "d/sg"), 0, 1234); err != nil {
				return "", err
			}
			if err := unix.Chmod(j(d, "d/sg"), 0o2775); err != nil {
				return "", err
			}
			if err := writeNew(j(d, "d/sg/f"), nil); err != nil {
				return "", err
			}
			if err := os.Mkdir(j(d, "d/sg/sd"), 0o755); err != nil {
				return "", err
			}
			f, err := stat(j(d, "d/sg/f"))
			if err != nil {
				return "", err
			}
			s, err := stat(j(d, "d/sg/sd"))
			return f + " / " + s, err
		}},
		{"sticky directory", func(d string) (string, error) {
			if err := os.Mkdir(j(d, "d/st"), 0o755); err != nil {
				return "", err
			}
			if err := unix.Chmod(j(d, "d/st"), 0o1777); err != nil {
				return "", err
			}
			return stat(j(d, "d/st"))
		}},
		{"create mode 0600", func(d string) (string, error) {
			if err := openClose(j(d, "d/m"), unix.O_CREAT|unix.O_WRONLY); err != nil {
				return "", err
			}
			return stat(j(d, "d/m"))
		}},
		{"chmod 0000", func(d string) (string, error) {
			if err := os.Chmod(j(d, "d/m"), 0); err != nil {
				return "", err
			}
			return stat(j(d, "d/m"))
		}},
		{"truncate a dir", func(d string) (string, error) { return none(os.Truncate(j(d, "d/sub"), 0)) }},
		{"truncate negative", func(d string) (string, error) { return none(unix.Truncate(j(d, "d/h2"), -1)) }},
		{"ftruncate read-only", func(d string) (string, error) {
			f, err := os.Open(j(d, "d/h2"))
			if err != nil {
				return "", err
			}
			defer f.Close()
			return none(unix.Ftruncate(int(f.Fd()), 0))
		}},
		{"write read-only", func(d string) (string, error) {
			f, err := os.Open(j(d, "d/h2"))
			if err != nil {
				return "", err
			}
			defer f.Close()
			_, err = unix.Write(int(f.Fd()), []byte("x"))
			return "", err
		}},
		{"read write-only", func(d string) (string, error) {
			f, err := os.OpenFile(j(d, "d/h2"), os.O_WRONLY, 0)
			if err != nil {
				return "", err
			}
			defer f.Close()
			_, err = unix.Read(int(f.Fd()), make([]byte, 1))
			return "", err
		}},
		{"read a dir", func(d string) (string, error) {
			f, err := os.Open(j(d, "d"))
			if err != nil {
				return "", err
			}
			defer f.Close()
			_, err = unix.Read(int(f.Fd()), make([]byte, 1))
			return "", err
		}},
		{"pread past the end", func(d string) (string, error) {
			f, err := os.Open(j(d, "d/h2"))
			if err != nil {
				return "", err
			}
			defer f.Close()
			n, err := unix.Pread(int(f.Fd()), make([]byte, 10), 1000)
			return fmt.Sprint(n), err
		}},
		{"sparse file", func(d string) (string, error) {
			if err := writeNew(j(d, "d/sp"), nil); err != nil {
				return "", err
			}
			if err := pwriteAt(j(d, "d/sp"), 100000, []byte("end")); err != nil {
				return "", err
			}
			b, err := os.ReadFile(j(d, "d/sp"))
			if err != nil {
				return "", err
			}
			return fmt.Sprint(len(b), bytes.Count(b, []byte{0}), string(b[100000:])), nil
		}},
		{"O_APPEND ignores the offset", func(d string) (string, error) {
			if err := writeNew(j(d, "d/ap"), []byte("abc")); err != nil {
				return "", err
			}
			f, err := os.OpenFile(j(d, "d/ap"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return "", err
			}
			if _, err := unix.Pwrite(int(f.Fd()), []byte("XY"), 0); err != nil {
				f.Close()
				return "", err
			}
			f.Close()
			b, err := os.ReadFile(j(d, "d/ap"))
			return string(b), err
		}},
		{"SEEK_END", func(d string) (string, error) { return seekIn(j(d, "d/sp"), -3, unix.SEEK_END) }},
		{"SEEK_HOLE past the data", func(d string) (string, error) { return seekIn(j(d, "d/sp"), 100001, unix.SEEK_HOLE) }},
		{"SEEK_DATA past the end", func(d string) (string, error) { return seekIn(j(d, "d/sp"), 200000, unix.SEEK_DATA) }},
		{"listxattr", func(d string) (string, error) {
			buf := make([]byte, 4096)
			n, err := unix.Listxattr(j(d, "d/h2"), buf)
			if err != nil {
				return "", err
			}
			return strings.ReplaceAll(string(buf[:n]), "\x00", " "), nil
		}},
		{"getxattr missing", func(d string) (string, error) {
			_, err := unix.Getxattr(j(d, "d/h2"), "user.nope", make([]byte, 16))
			return "", err
		}},
		{"getxattr into a short buffer", func(d string) (string, error) {
			if err := unix.Setxattr(j(d, "d/h2"), "user.long", []byte("0123456789"), 0); err != nil {
				return "", err
			}
			_, err := unix.Getxattr(j(d, "d/h2"), "user.long", make([]byte, 4))
			return "", err
		}},
		{"XATTR_CREATE on existing", func(d string) (string, error) {
			return none(unix.Setxattr(j(d, "d/h2"), "user.x", []byte("2"), unix.XATTR_CREATE))
		}},
		{"XATTR_REPLACE on missing", func(d string) (string, error) {
			return none(unix.Setxattr(j(d, "d/h2"), "user.y", []byte("2"), unix.XATTR_REPLACE))
		}},
		{"removexattr missing", func(d string) (string, error) { return none(unix.Removexattr(j(d, "d/h2"), "user.y")) }},
		{"user xattr on a symlink", func(d string) (string, error) {
			return none(unix.Lsetxattr(j(d, "d/s"), "user.q", []byte("1"), 0))
		}},
		{"readdir", func(d string) (string, error) {
			es, err := os.ReadDir(j(d, "d"))
			var names []string
			for _, e := range es {
				if !strings.HasPrefix(e.Name(), "nnn") {
					names = append(names, e.Name()+":"+e.Type().String())
				}
			}
			return strings.Join(names, " "), err
		}},
		{"O_CREAT on a dir", func(d string) (string, error) { return none(openClose(j(d, "d/sub"), unix.O_CREAT|unix.O_RDONLY)) }},
		{"O_CREAT|O_EXCL on a dir", func(d string) (string, error) {
			return none(openClose(j(d, "d/sub"), unix.O_CREAT|unix.O_EXCL|unix.O_RDONLY))
		}},
		{"SEEK_HOLE/SEEK_DATA around unwritten extents", func(d string) (string, error) { return seekUnwrittenStep(j(d, "d/fa")) }},
		{"SEEK_HOLE/SEEK_DATA over dirty pages in unwritten extents", func(d string) (string, error) {
			return seekDirtyStep(j(d, "d/fd"))
		}},
		{"default ACL on create", func(d string) (string, error) { return defaultACLStep(j(d, "d/acl")) }},
		{"file with a trailing slash", func(d string) (string, error) { return stat(j(d, "d/h2") + "/") }},
		{"rename to a trailing slash", func(d string) (string, error) { return none(unix.Rename(j(d, "d/h2"), j(d, "d/zz")+"/")) }},
	}
}

// TestMatchesBackingFilesystem runs the same operations on the backing
// filesystem itself and on an encrypted and a plain directory of the
// mount, and requires the same observations: the mount should be
// indistinguishable from a local filesystem to a POSIX conformance suite.
// Known differences are left out of the steps and listed in README
// (atime of reads served from the page cache; SEEK_DATA answers in whole
// plaintext blocks; the header copy takes 168 bytes of a file's xattr
// space).
func TestMatchesBackingFilesystem(t *testing.T) {
	tf := newVMAndPlainFS(t)
	ref := t.TempDir() // the same filesystem as the backing directory
	steps := posixSteps()
	run := func(dir string) []string {
		var got []string
		for _, s := range steps {
			r, err := s.do(dir)
			got = append(got, outcome(r, err))
		}
		return got
	}
	want := run(ref)
	for _, dir := range []string{"vm", "plain"} {
		t.Run(dir, func(t *testing.T) {
			got := run(tf.m(dir))
			for i, s := range steps {
				if got[i] != want[i] {
					t.Errorf("%s: mount %q, backing filesystem %q", s.name, got[i], want[i])
				}
			}
		})
	}
}

// posixACL is the system.posix_acl_* xattr value of entries {tag, perm, id}
// (linux/posix_acl_xattr.h).
func posixACL(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// defaultACLStep makes directory dir with a default ACL narrower than the
// umask and the modes asked for, creates one entry of every kind in it and
// reports their modes and access ACLs: the ACL, not the mode asked for,
// decides (create, mkdir, mknod, symlink, O_TMPFILE).
func defaultACLStep(dir string) (string, error) {
	const undef = 1<<32 - 1
	acl := posixACL([3]uint32{0x01, 7, undef}, [3]uint32{0x02, 7, 1000}, [3]uint32{0x04, 5, undef},
		[3]uint32{0x10, 5, undef}, [3]uint32{0x20, 0, undef}) // u::rwx u:1000:rwx g::r-x m::r-x o::---
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	if err := unix.Setxattr(dir, "system.posix_acl_default", acl, 0); err != nil {
		return "", err
	}
	j := filepath.Join
	create := []struct {
		name string
		do   func() error
	}{
		{"file", func() error { return createMode(j(dir, "file"), 0o666) }},
		{"dir", func() error { return os.Mkdir(j(dir, "dir"), 0o777) }},
		{"fifo", func() error { return unix.Mkfifo(j(dir, "fifo"), 0o666) }},
		{"mknod", func() error { return unix.Mknod(j(dir, "mknod"), unix.S_IFREG|0o666, 0) }},
		{"symlink", func() error { return os.Symlink("file", j(dir, "symlink")) }},
		{"tmpfile", func() error {
			fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o666)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Linkat(fd, "", unix.AT_FDCWD, j(dir, "tmpfile"), unix.AT_EMPTY_PATH)
		}},
	}
	var out []string
	for _, c := range create {
		if err := c.do(); err != nil {
			return "", fmt.Errorf("%s: %w", c.name, err)
		}
		l, err := statLine(j(dir, c.name), false)
		if err != nil {
			return "", err
		}
		a := make([]byte, 256)
		n, err := unix.Lgetxattr(j(dir, c.name), "system.posix_acl_access", a)
		out = append(out, fmt.Sprintf("%s: %s acl=%x %v", c.name, l, a[:max(n, 0)], err))
	}
	return strings.Join(out, " / "), nil
}

// createMode creates p with open(O_CREAT) and mode.
func createMode(p string, mode uint32) error {
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, mode)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// seekReport is SEEK_DATA and SEEK_HOLE from each offset of fd, in KiB.
func seekReport(fd int, offs ...int64) string {
	var out []string
	for _, off := range offs {
		for _, w := range []struct {
			name   string
			whence int
		}{{"data", unix.SEEK_DATA}, {"hole", unix.SEEK_HOLE}} {
			r, err := unix.Seek(fd, off<<10, w.whence)
			out = append(out, fmt.Sprintf("%s(%dK)=%s", w.name, off, outcome(fmt.Sprint(r>>10, "K"), err)))
		}
	}
	return strings.Join(out, " ")
}

// seekUnwrittenStep writes [0, 56 KiB), fallocates up to 256 KiB (unwritten
// extents), writes [128, 132) KiB and punches [16, 24) KiB, then reports
// SEEK_DATA and SEEK_HOLE around every edge: block precision, unwritten
// extents are holes.
func seekUnwrittenStep(p string) (string, error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fd := int(f.Fd())
	if _, err := f.WriteAt(bytes.Repeat([]byte{7}, 56<<10), 0); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := unix.Fallocate(fd, 0, 0, 256<<10); err != nil {
		return "", err
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{8}, 4<<10), 128<<10); err != nil {
		return "", err
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 16<<10, 8<<10); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return seekReport(fd, 0, 12, 16, 20, 24, 52, 56, 60, 100, 128, 130, 132, 255), nil
}

// seekDirtyStep fallocates first and writes into the unwritten extents
// without syncing (dirty pages on the backing store), then reports as
// seekUnwrittenStep does.
func seekDirtyStep(p string) (string, error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unix.Fallocate(fd, 0, 0, 256<<10); err != nil {
		return "", err
	}
	for _, off := range []int64{0, 60, 64, 200} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{9}, 4<<10), off<<10); err != nil {
			return "", err
		}
	}
	return seekReport(fd, 0, 4, 8, 60, 64, 68, 196, 200, 204), nil
}
