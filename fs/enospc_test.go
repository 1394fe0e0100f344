package fs

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
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

// failingPwrite lets the next armed write store budget bytes, then fail
// with ENOSPC, as a backing store that runs out of space mid-write does.
type failingPwrite struct {
	mu     sync.Mutex
	armed  bool
	budget int
}

func (p *failingPwrite) arm(budget int) {
	p.mu.Lock()
	p.armed, p.budget = true, budget
	p.mu.Unlock()
}

func (p *failingPwrite) pwrite(fd int, b []byte, off int64) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return unix.Pwrite(fd, b, off)
	}
	if p.budget == 0 {
		p.armed = false
		return 0, unix.ENOSPC
	}
	n, err := unix.Pwrite(fd, b[:min(len(b), p.budget)], off)
	p.budget -= max(n, 0)
	return n, err
}

// TestWholeBlockWriteFailure: a whole-block write reads no old ciphertext,
// so when the backing store fails part way every block it touched must
// read back as its old content, its new content, or (only the block the
// failure cut through) a hole, never fail authentication, and nothing
// outside the write may change.
func TestWholeBlockWriteFailure(t *testing.T) {
	const blocks = 8
	const cbs = objcrypt.CipherBlockSize
	for _, c := range []struct {
		name       string
		first, n   int
		budget     int
		want       string // per block of the file after the write: o(ld) n(ew) z(ero)
		wantBlocks int
	}{
		{"nothing written", 2, 4, 0, "oooooooo", 8},
		{"two whole blocks", 2, 4, 2 * cbs, "oonnoooo", 8},
		{"cut through the third", 2, 4, 2*cbs + 2000, "oonnzooo", 8},
		{"cut through the first", 2, 4, 100, "oozooooo", 8},
		{"extending, cut past the old end", 6, 4, 3*cbs + 500, "oooooonn", 8},
	} {
		t.Run(c.name, func(t *testing.T) {
			fp := &failingPwrite{}
			tf := newTestFS(t, testOpts{pwrite: fp.pwrite})
			tf.encDir("vm")
			f := openRW(t, tf.m("vm/disk"), syscall.O_DIRECT)
			defer f.Close()
			old := randBytes(blocks * 4096)
			if _, err := f.WriteAt(old, 0); err != nil {
				t.Fatal(err)
			}
			neu := randBytes(c.n * 4096)
			fp.arm(c.budget)
			if _, err := f.WriteAt(neu, int64(c.first*4096)); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write: %v, want ENOSPC", err)
			}
			st, err := f.Stat()
			if err != nil || st.Size() != int64(c.wantBlocks*4096) {
				t.Fatalf("size %d (%v), want %d", st.Size(), err, c.wantBlocks*4096)
			}
			got := make([]byte, st.Size())
			if n, err := f.ReadAt(got, 0); n != len(got) {
				t.Fatalf("read back %d of %d: %v", n, len(got), err)
			}
			for b, kind := range c.want {
				blk := got[b*4096 : (b+1)*4096]
				var want []byte
				switch kind {
				case 'o':
					want = old[b*4096 : (b+1)*4096]
				case 'n':
					want = neu[(b-c.first)*4096 : (b-c.first+1)*4096]
				case 'z':
					want = make([]byte, 4096)
				}
				if !bytes.Equal(blk, want) {
					t.Errorf("block %d is not the %c content", b, kind)
				}
			}
			if tf.root.Stats().AuthFailures != 0 {
				t.Fatal("a block failed authentication")
			}
		})
	}
}
