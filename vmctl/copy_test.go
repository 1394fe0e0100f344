package vmctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"
)

// extent is a range of bytes written into a test file; everything else is a
// hole.
type extent struct {
	off int64
	n   int
}

// makeSparse creates a file of size bytes with random data at the extents.
func makeSparse(t *testing.T, path string, size int64, exts []extent, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	for _, e := range exts {
		b := make([]byte, e.n)
		for i := range b {
			b[i] = byte(rng.Uint32()) | 1 // never a zero block
		}
		if _, err := f.WriteAt(b, e.off); err != nil {
			t.Fatal(err)
		}
	}
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// supportsHoles reports whether dir's filesystem keeps holes (tmpfs, ext4,
// xfs, btrfs do); the hole assertions are skipped elsewhere.
func supportsHoles(t *testing.T, dir string) bool {
	p := filepath.Join(dir, ".holeprobe")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	defer f.Close()
	_ = f.Truncate(64 << 20)
	return allocated(t, p) < 1<<20
}

func TestConvertSparse(t *testing.T) {
	const MiB = 1 << 20
	tests := []struct {
		name string
		size int64
		exts []extent
	}{
		{"empty", 0, nil},
		{"all hole", 64 * MiB, nil},
		{"small dense", 1000, []extent{{0, 1000}}},
		{"unaligned tail", 3*MiB + 123, []extent{{0, 3*MiB + 123}}},
		{"data at start", 64 * MiB, []extent{{0, MiB}}},
		{"data in the middle", 64 * MiB, []extent{{20*MiB + 100, 5000}}},
		{"data at the end", 64 * MiB, []extent{{64*MiB - 4096, 4096}}},
		{"many extents", 256 * MiB, []extent{{0, 4096}, {MiB, 3 * MiB}, {100*MiB + 7, 1}, {200 * MiB, MiB + 5}, {256*MiB - 10, 10}}},
		{"sparse 1 GiB with 16 MiB", 1 << 30, []extent{{0, 8 * MiB}, {512 * MiB, 8 * MiB}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			holes := supportsHoles(t, dir)
			p := filepath.Join(dir, "disk.raw")
			makeSparse(t, p, tc.size, tc.exts, 1)
			want := sha(t, p)
			allocBefore := allocated(t, p)
			var progressed int64
			c := newObjConv()
			c.progress = func(n int64) { progressed += n }
			n, err := c.convert(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			if got := sha(t, p); got != want {
				t.Fatalf("content changed: sha %x, want %x", got, want)
			}
			fi, _ := os.Stat(p)
			if fi.Size() != tc.size {
				t.Errorf("size %d, want %d", fi.Size(), tc.size)
			}
			if progressed != n {
				t.Errorf("progress reported %d bytes, convert returned %d", progressed, n)
			}
			var data int64
			for _, e := range tc.exts {
				data += int64(e.n)
			}
			if holes {
				if n > data+2*MiB {
					t.Errorf("copied %d bytes for %d bytes of data: holes were read", n, data)
				}
				if a := allocated(t, p); a > allocBefore+64*1024 {
					t.Errorf("allocated %d bytes after, %d before: holes were filled", a, allocBefore)
				}
			}
			assertNoTemp(t, dir)
		})
	}
}

// TestConvertZeroBlocksBecomeHoles: zero blocks inside data are not written,
// so a copy from a filesystem without SEEK_DATA support stays sparse.
func TestConvertZeroBlocksBecomeHoles(t *testing.T) {
	dir := t.TempDir()
	if !supportsHoles(t, dir) {
		t.Skip("filesystem without holes")
	}
	p := filepath.Join(dir, "dense-zeros")
	b := make([]byte, 8<<20)
	copy(b[5<<20:], "not zero")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newObjConv().convert(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, b) {
		t.Fatal("content changed")
	}
	if a := allocated(t, p); a > 64*1024 {
		t.Errorf("allocated %d bytes; zero blocks were written", a)
	}
}

func TestWriteNonZero(t *testing.T) {
	tests := []struct {
		name   string
		off    int64
		data   []byte
		writes int64 // bytes expected allocated, in blocks
	}{
		{"zeros", 0, make([]byte, 3*holeBlock), 0},
		{"one byte mid-block", 0, append(make([]byte, holeBlock+5), 1), 1},
		{"unaligned offset", 100, append(make([]byte, holeBlock), 1), 1},
		{"dense", 0, bytes.Repeat([]byte{9}, 2*holeBlock), 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f, err := os.Create(filepath.Join(dir, "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := writeNonZero(f, tc.data, tc.off); err != nil {
				t.Fatal(err)
			}
			end := tc.off + int64(len(tc.data))
			if err := f.Truncate(end); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(tc.data))
			if _, err := f.ReadAt(got, tc.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatal("read back differs")
			}
			if supportsHoles(t, dir) {
				if a := allocated(t, f.Name()); a > tc.writes*holeBlock {
					t.Errorf("allocated %d, want <= %d", a, tc.writes*holeBlock)
				}
			}
		})
	}
}

func TestConvertPreservesMetadata(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.conf")
	if err := os.WriteFile(p, []byte("memory = 256\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1234, 5678
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	xattrs := xattr.Set(p, "user.backup.tag", []byte("weekly")) == nil
	if xattrs {
		if err := xattr.Set(p, "user.cryptds.hdr", []byte("must not be copied")); err != nil {
			t.Fatal(err)
		}
	}
	atime := time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
	mtime := time.Date(2021, 6, 7, 8, 9, 10, 11000, time.UTC)
	if err := os.Chtimes(p, atime, mtime); err != nil {
		t.Fatal(err)
	}
	var before unix.Stat_t
	_ = unix.Stat(p, &before)
	if _, err := newObjConv().convert(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino == before.Ino {
		t.Error("inode unchanged: the object was not replaced")
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if st.Mode&0o7777 != 0o640 {
		t.Errorf("mode %o, want 640", st.Mode&0o7777)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("mtime %v, want %v", got, mtime)
	}
	if got := time.Unix(st.Atim.Unix()); !got.Equal(atime) {
		t.Errorf("atime %v, want %v", got, atime)
	}
	if xattrs {
		if v, err := xattr.Get(p, "user.backup.tag"); err != nil || string(v) != "weekly" {
			t.Errorf("user xattr: %q, %v", v, err)
		}
		if _, err := xattr.Get(p, "user.cryptds.hdr"); !errors.Is(err, xattr.ENOATTR) {
			t.Errorf("user.cryptds.* xattr copied (err %v); the filesystem alone sets it", err)
		}
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, TempPrefix+"*"))
	if len(m) > 0 {
		t.Errorf("temp files left: %v", m)
	}
}

// crashAt runs one conversion in its own goroutine and ends that goroutine
// (runtime.Goexit: deferred closes run, explicit cleanup does not, as with a
// killed process) the first time crash(stage, done) is true.
func crashAt(t *testing.T, path string, crash func(stage string, done int64) bool) (crashed bool, err error) {
	t.Helper()
	c := newObjConv()
	c.buf = make([]byte, 64*1024) // many chunks, many crash points
	c.hook = func(stage string, done int64) error {
		if crash(stage, done) {
			crashed = true
			runtime.Goexit()
		}
		return nil
	}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		_, err = c.convert(context.Background(), path)
	}()
	<-finished
	return crashed, err
}

func TestConvertCrashPoints(t *testing.T) {
	tests := []struct {
		name      string
		stage     string
		after     int64
		wantTemp  bool
		converted bool
	}{
		{"after first chunk", "copy", 1, true, false},
		{"half way", "copy", 2 << 20, true, false},
		{"all data copied", "copy", 4<<20 - 1, true, false},
		{"before rename", "rename", 0, true, false},
		{"after rename", "renamed", 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "disk.raw")
			makeSparse(t, p, 16<<20, []extent{{0, 3 << 20}, {8 << 20, 1 << 20}}, 3)
			want := sha(t, p)
			var ino unix.Stat_t
			_ = unix.Stat(p, &ino)
			crashed, err := crashAt(t, p, func(stage string, done int64) bool {
				return stage == tc.stage && done >= tc.after
			})
			if !crashed {
				t.Fatalf("never reached the crash point (err %v)", err)
			}
			if got := sha(t, p); got != want {
				t.Fatal("the object is broken after the crash")
			}
			var now unix.Stat_t
			_ = unix.Stat(p, &now)
			if (now.Ino != ino.Ino) != tc.converted {
				t.Errorf("replaced=%v, want %v", now.Ino != ino.Ino, tc.converted)
			}
			_, terr := os.Stat(tempName(p))
			if (terr == nil) != tc.wantTemp {
				t.Fatalf("temp file present=%v, want %v", terr == nil, tc.wantTemp)
			}
			// The re-run removes the leftover and finishes the job.
			if _, err := newObjConv().convert(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			if got := sha(t, p); got != want {
				t.Fatal("content changed after the re-run")
			}
			assertNoTemp(t, dir)
		})
	}
}

// TestConvertRandomCrashes crashes at random byte counts over several seeds.
func TestConvertRandomCrashes(t *testing.T) {
	for seed := range uint64(5) {
		rng := rand.New(rand.NewPCG(seed, 99))
		dir := t.TempDir()
		p := filepath.Join(dir, "disk.raw")
		makeSparse(t, p, 32<<20, []extent{{int64(rng.IntN(1 << 20)), 1 << 20}, {20 << 20, rng.IntN(3<<20) + 1}}, seed)
		want := sha(t, p)
		for range 3 {
			at := rng.Int64N(2 << 20)
			if crashed, err := crashAt(t, p, func(stage string, done int64) bool { return stage == "copy" && done >= at }); !crashed && err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			if sha(t, p) != want {
				t.Fatalf("seed %d: object broken after crash at %d bytes", seed, at)
			}
		}
		if _, err := newObjConv().convert(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		if sha(t, p) != want {
			t.Fatalf("seed %d: content changed", seed)
		}
		assertNoTemp(t, dir)
	}
}

func TestConvertErrorsCleanUp(t *testing.T) {
	boom := errors.New("injected")
	tests := []struct {
		name    string
		setup   func(c *objConv, path string, cancel context.CancelFunc)
		wantErr error
	}{
		{"I/O error mid-copy", func(c *objConv, _ string, _ context.CancelFunc) {
			c.hook = func(stage string, done int64) error {
				if stage == "copy" && done > 1<<20 {
					return boom
				}
				return nil
			}
		}, boom},
		{"cancelled", func(c *objConv, _ string, cancel context.CancelFunc) {
			c.hook = func(stage string, done int64) error {
				if done > 1<<20 {
					cancel()
				}
				return nil
			}
		}, context.Canceled},
		{"object written during the copy", func(c *objConv, path string, _ context.CancelFunc) {
			c.hook = func(stage string, done int64) error {
				if stage == "copy" && done == 1<<20 {
					f, err := os.OpenFile(path, os.O_WRONLY, 0)
					if err != nil {
						return err
					}
					defer f.Close()
					_, err = f.WriteAt([]byte("guest write"), 10)
					return err
				}
				return nil
			}
		}, ErrChanged},
		{"copy in the wrong state", func(c *objConv, _ string, _ context.CancelFunc) {
			c.verify = func(string) error { return ErrPolicyNotApplied }
		}, ErrPolicyNotApplied},
		{"opened for writing meanwhile", func(c *objConv, _ string, _ context.CancelFunc) {
			c.busy = func(path string) error {
				return &BusyError{VM: filepath.Dir(path), Files: []OpenFile{{Path: path, PID: 1, Command: "qemu"}}}
			}
		}, ErrBusy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "disk.raw")
			makeSparse(t, p, 8<<20, []extent{{0, 4 << 20}}, 5)
			var ino unix.Stat_t
			_ = unix.Stat(p, &ino)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := newObjConv()
			tc.setup(c, p, cancel)
			_, err := c.convert(ctx, p)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			var now unix.Stat_t
			_ = unix.Stat(p, &now)
			if now.Ino != ino.Ino {
				t.Error("the original was replaced despite the error")
			}
			assertNoTemp(t, dir)
		})
	}
}

func TestConvertRefusesHardLinks(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(p, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := newObjConv().convert(context.Background(), p); !errors.Is(err, ErrHardLink) {
		t.Fatalf("err %v, want ErrHardLink", err)
	}
	assertNoTemp(t, dir)
}

func TestOpenWriters(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		flag int
		busy bool
	}{
		{"read only", os.O_RDONLY, false},
		{"write only", os.O_WRONLY, true},
		{"read write", os.O_RDWR, true},
		{"append", os.O_WRONLY | os.O_APPEND, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(p, tc.flag, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := openWriters(dir)
			if (len(got) > 0) != tc.busy {
				t.Fatalf("openWriters = %v, want busy=%v", got, tc.busy)
			}
			if tc.busy && (got[0].PID != os.Getpid() || got[0].Path != p) {
				t.Errorf("got %+v, want our pid %d and %s", got[0], os.Getpid(), p)
			}
			if len(openWriters(filepath.Join(dir, "other"))) != 0 {
				t.Error("a file outside the directory counted")
			}
		})
	}
	be := &BusyError{VM: dir, Files: []OpenFile{{Path: p, PID: 42, Command: "qemu-system-x86"}}}
	if !errors.Is(be, ErrBusy) || !bytes.Contains([]byte(be.Error()), []byte("qemu-system-x86 pid 42")) {
		t.Errorf("BusyError %q does not match ErrBusy or name the process", be.Error())
	}
}
