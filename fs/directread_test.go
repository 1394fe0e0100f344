package fs

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectLargeReads reads an encrypted file through an O_DIRECT and a
// buffered handle in requests large enough for the O_DIRECT backing path,
// at aligned and unaligned offsets and across the end of the file, once
// with the backing pages evicted (read from the disk directly) and once
// with them cached (read through the page cache), and compares every byte.
func TestDirectLargeReads(t *testing.T) {
	for _, kind := range handleKinds {
		t.Run(kind.name, func(t *testing.T) { testDirectLargeReads(t, kind.flags) })
	}
}

func testDirectLargeReads(t *testing.T, flags int) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	const size = 3<<20 + 1234
	want := randBytes(size)
	mustWrite(t, tf.m("vm/disk"), want)
	requireBackingDirect(t, tf.b("vm/disk"))
	f := openRW(t, tf.m("vm/disk"), flags)
	reads := []struct {
		name     string
		off, len int
	}{
		{"first MiB", 0, 1 << 20},
		{"aligned 512 KiB", 3 * 4096, 512 << 10},
		{"unaligned 300 KiB", 1<<20 + 100, 300 << 10},
		{"across the end", 3<<20 - 64<<10, 1 << 20},
		{"from the last bytes", size - 10, 256 << 10},
		{"past the end", size + 5, 256 << 10},
	}
	// round reads everything once, with the backing pages cached or
	// evicted first, and returns the bytes the daemon read with O_DIRECT.
	round := func(cached bool) uint64 {
		back := mustOpenFd(t, tf.b("vm/disk"))
		if cached {
			cacheBacking(t, tf.b("vm/disk"))
		} else if err := unix.Fsync(back); err != nil {
			t.Fatal(err)
		} else if err := unix.Fadvise(back, 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		unix.Close(back)
		dropMountCache(t, tf.m("vm/disk")) // buffered reads must reach the daemon
		before := tf.root.Stats().BytesReadDirect
		for _, r := range reads {
			buf := make([]byte, r.len)
			n, _ := f.ReadAt(buf, int64(r.off))
			end := min(r.off+r.len, size)
			exp := []byte{}
			if r.off < size {
				exp = want[r.off:end]
			}
			if !bytes.Equal(buf[:n], exp) {
				t.Errorf("cached=%v %s: read %d bytes that differ from the %d written", cached, r.name, n, len(exp))
			}
		}
		return tf.root.Stats().BytesReadDirect - before
	}
	if direct := round(false); direct == 0 {
		t.Error("evicted backing pages: nothing read with O_DIRECT")
	}
	// Now and then the kernel evicts a page or two of the freshly read
	// backing file before the reads reach it (cachestat: 774 of 776 pages
	// left, about 1 run in 100), which rightly sends that request to the
	// disk. A daemon that ignored the cache would read directly every time.
	var direct uint64
	for range 3 {
		if direct = round(true); direct == 0 {
			break
		}
	}
	if direct != 0 {
		t.Errorf("cached backing pages: %d bytes read with O_DIRECT in each of 3 rounds, want 0", direct)
	}
}

func mustOpenFd(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestDirectLargeWrites writes an encrypted file through an O_DIRECT and a
// buffered handle in requests that do and do not map to 4 KiB-aligned
// stored ranges, with the backing pages of the target cached and not, and
// checks every byte through a buffered handle and, the mount's cache
// evicted, a fresh open, and which writes went to the backing store with
// O_DIRECT.
func TestDirectLargeWrites(t *testing.T) {
	for _, kind := range handleKinds {
		t.Run(kind.name, func(t *testing.T) { testDirectLargeWrites(t, kind.flags) })
	}
}

func testDirectLargeWrites(t *testing.T, flags int) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	const size = 4 << 20
	want := randBytes(size)
	mustWrite(t, tf.m("vm/disk"), want)
	direct := openRW(t, tf.m("vm/disk"), flags)
	buffered := openRW(t, tf.m("vm/disk"), 0)
	writes := []struct {
		name       string
		off, len   int
		wantDirect bool
	}{
		{"1 MiB at 0", 0, 1 << 20, true},
		{"512 KiB at 512 KiB", 512 << 10, 512 << 10, true},
		{"1 MiB at 1.5 MiB", 3 << 19, 1 << 20, true},
		{"1 MiB at 4 KiB (stored range unaligned)", 4096, 1 << 20, false},
		{"256 KiB at 512 KiB (stored end unaligned)", 512 << 10, 256 << 10, false},
		{"1 MiB at 2 MiB + 100 bytes (unaligned)", 2<<20 + 100, 1 << 20, false},
		{"extending 1 MiB at the end", size - 512<<10, 1 << 20, true},
	}
	requireBackingDirect(t, tf.b("vm/disk"))
	for i, w := range writes {
		if i%2 == 0 {
			cacheBacking(t, tf.b("vm/disk"))
		}
		data := randBytes(w.len)
		before := tf.root.Stats().BytesWrittenDirect
		if _, err := direct.WriteAt(data, int64(w.off)); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		if end := w.off + w.len; end > len(want) {
			want = append(want, make([]byte, end-len(want))...)
		}
		copy(want[w.off:], data)
		if got := readAll(t, buffered, len(want)); !bytes.Equal(got, want) {
			t.Errorf("%s: a buffered handle reads different bytes", w.name)
		}
		if d := tf.root.Stats().BytesWrittenDirect - before; (d > 0) != w.wantDirect {
			t.Errorf("%s: %d stored bytes written with O_DIRECT, want direct=%v", w.name, d, w.wantDirect)
		}
	}
	direct.Close()
	buffered.Close()
	tf.waitReleased()
	dropMountCache(t, tf.m("vm/disk"))
	checkContent(t, tf.m("vm/disk"), want)
}

// cacheBacking reads a backing file whole into the page cache.
func cacheBacking(t *testing.T, path string) {
	t.Helper()
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
}

// requireBackingDirect skips (fails in CI) unless the backing file at path
// can be opened with O_DIRECT, which the direct paths under test need.
func requireBackingDirect(t *testing.T, path string) {
	t.Helper()
	probe := mustOpenFd(t, path)
	fd := openDirect(probe, false)
	unix.Close(probe)
	if fd < 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the backing filesystem of the test refuses O_DIRECT; CI needs it to test the direct I/O paths")
		}
		t.Skip("the backing filesystem refuses O_DIRECT")
	}
	unix.Close(fd)
}

// TestDirectRefused stands in for a backing filesystem that wants a larger
// O_DIRECT alignment than 4 KiB: every pread and pwrite on an O_DIRECT
// descriptor fails with EINVAL. Large reads and writes must then go
// through the page cache with the right bytes, not fail, and the handle
// must stop trying the direct path.
func TestDirectRefused(t *testing.T) {
	refuseDirect := func(io ioAtFunc) ioAtFunc {
		return func(fd int, p []byte, off int64) (int, error) {
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err == nil && fl&unix.O_DIRECT != 0 {
				return 0, unix.EINVAL
			}
			return io(fd, p, off)
		}
	}
	for _, kind := range handleKinds {
		t.Run(kind.name, func(t *testing.T) {
			tf := newTestFS(t, testOpts{pwrite: refuseDirect(unix.Pwrite), pread: refuseDirect(unix.Pread)})
			tf.encDir("vm")
			want := randBytes(4 << 20)
			mustWrite(t, tf.m("vm/disk"), want[:1<<20])
			requireBackingDirect(t, tf.b("vm/disk"))
			f := openRW(t, tf.m("vm/disk"), kind.flags)
			for off := 0; off < len(want); off += 1 << 20 {
				if _, err := f.WriteAt(want[off:off+1<<20], int64(off)); err != nil {
					t.Fatalf("1 MiB write at %d: %v", off, err)
				}
			}
			back := mustOpenFd(t, tf.b("vm/disk"))
			if err := unix.Fsync(back); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fadvise(back, 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			unix.Close(back)
			dropMountCache(t, tf.m("vm/disk"))
			if got := readAll(t, f, len(want)); !bytes.Equal(got, want) {
				t.Error("large reads after refused O_DIRECT return different bytes")
			}
			if s := tf.root.Stats(); s.BytesReadDirect != 0 || s.BytesWrittenDirect != 0 {
				t.Errorf("%d bytes read and %d written with O_DIRECT, want 0", s.BytesReadDirect, s.BytesWrittenDirect)
			}
			// One per handle: the one that wrote the first MiB, and f.
			if n := strings.Count(tf.logs.String(), "refuses 4 KiB-aligned O_DIRECT"); n != 2 {
				t.Errorf("%d warnings about the refused direct path, want 2 (one per handle)", n)
			}
		})
	}
}
