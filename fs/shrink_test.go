package fs

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestTruncateIntoBlockOrder checks the order a truncate into a block
// takes on the backing file: the record first, then the block rewritten
// in place while the file still has its old size, then the cut, then the
// record removed (shrink.go explains why each crash point is safe).
func TestTruncateIntoBlockOrder(t *testing.T) {
	var mu sync.Mutex // the daemon's goroutines write seen, the test reads it
	var seen []string
	tf := newTestFS(t, testOpts{pwrite: func(fd int, p []byte, off int64) (int, error) {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		rec, err := unix.Fgetxattr(fd, xattrShrink, make([]byte, 32))
		mu.Lock()
		seen = append(seen, "write "+strconv.Itoa(len(p))+" size "+strconv.FormatInt(st.Size, 10)+" recorded "+strconv.FormatBool(err == nil && rec > 0))
		mu.Unlock()
		return unix.Pwrite(fd, p, off)
	}})
	tf.encDir("vm")
	data := randBytes(3*4096 + 500)
	mustWrite(t, tf.m("vm/f"), data)
	mu.Lock()
	seen = nil
	mu.Unlock()
	if err := os.Truncate(tf.m("vm/f"), 2*4096+100); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	oldCsize := objcrypt.CipherSizeFromPlain(uint64(len(data)))
	want := "write " + strconv.Itoa(100+objcrypt.BlockOverhead) + " size " + strconv.FormatUint(oldCsize, 10) + " recorded true"
	if len(seen) != 1 || seen[0] != want {
		t.Errorf("backing writes of the truncate: %q, want [%q]", seen, want)
	}
	if _, err := unix.Getxattr(tf.b("vm/f"), xattrShrink, nil); err != unix.ENODATA {
		t.Errorf("record after the truncate: %v, want ENODATA", err)
	}
	checkContent(t, tf.m("vm/f"), data[:2*4096+100])
}

// TestTruncateIntoBlockCrash leaves the backing file as the daemon would
// if it died at each point of a truncate into a block, remounts, and
// checks that the first open finishes or forgets the truncate: every byte
// reads back (old content, or new content cut at the new size), no block
// fails authentication, and the record is gone.
func TestTruncateIntoBlockCrash(t *testing.T) {
	const newSize = 2*4096 + 100
	cases := []struct {
		name      string
		record    string
		rewritten bool // the new last block was written in place
		cut       bool // the backing file was cut
		finished  bool // the truncate counts as done
		log       string
	}{
		{"died after recording", strconv.Itoa(newSize), false, false, false, "forgot a truncate"},
		{"died after rewriting the block", strconv.Itoa(newSize), true, false, true, "finished a truncate"},
		{"died after cutting the file", strconv.Itoa(newSize), true, true, true, ""},
		{"record unreadable", "12x", false, false, false, "unreadable truncate record"},
		{"record of an aligned size", strconv.Itoa(2 * 4096), false, false, false, "unreadable truncate record"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tf, data, enc := unmountedForShrink(t, newSize)
			back := tf.b("vm/f")
			if err := unix.Setxattr(back, xattrShrink, []byte(c.record), 0); err != nil {
				t.Fatal(err)
			}
			bf := openRW(t, back, 0)
			if c.rewritten {
				if _, err := bf.WriteAt(enc, int64(objcrypt.CipherOffsetOfBlock(2))); err != nil {
					t.Fatal(err)
				}
			}
			if c.cut {
				if err := bf.Truncate(int64(objcrypt.CipherSizeFromPlain(newSize))); err != nil {
					t.Fatal(err)
				}
			}
			bf.Close()

			again := newTestFS(t, testOpts{back: tf.back, keys: tf.keys})
			want := data
			if c.finished {
				want = data[:newSize]
			}
			checkContent(t, again.m("vm/f"), want)
			if _, err := unix.Getxattr(back, xattrShrink, nil); err != unix.ENODATA {
				t.Errorf("record after the first open: %v, want ENODATA", err)
			}
			if c.log != "" && !strings.Contains(again.logs.String(), c.log) {
				t.Errorf("log lacks %q:\n%s", c.log, again.logs.String())
			}
			// The file keeps working: a write and a truncate into a block.
			g := openRW(t, again.m("vm/f"), 0)
			if _, err := g.WriteAt([]byte("tail"), int64(len(want))); err != nil {
				t.Fatal(err)
			}
			if err := g.Truncate(int64(len(want)) + 2); err != nil {
				t.Fatal(err)
			}
			g.Close()
			checkContent(t, again.m("vm/f"), append(append([]byte(nil), want...), "ta"...))
		})
	}
}

// unmountedForShrink writes an encrypted file vm/f of three and a bit
// blocks, encrypts what a truncate to newSize (inside block 2) would store
// as the new last block, and unmounts, leaving the backing file for the
// caller to put into a crash state.
func unmountedForShrink(t *testing.T, newSize int) (tf *testFS, data, enc []byte) {
	t.Helper()
	tf = newTestFS(t, testOpts{})
	tf.encDir("vm")
	data = randBytes(3*4096 + 500)
	mustWrite(t, tf.m("vm/f"), data)
	f := openRW(t, tf.m("vm/f"), 0)
	n := nodeOf(t, tf, "vm/f")
	n.mu.Lock()
	o := n.obj
	n.mu.Unlock()
	enc, err := o.obj.EncryptBlock(nil, data[2*4096:newSize], 2)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	tf.waitReleased()
	if err := tf.srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	return tf, data, enc
}

// TestTruncateRecordUnsettled leaves a truncate record that the first open
// cannot settle (the backing file is immutable, as on a read-only backing
// store): the open still succeeds, every block before the interrupted one
// reads back, the interrupted block fails with EIO instead of returning
// wrong bytes, and a later open, once the file can be changed, settles it.
func TestTruncateRecordUnsettled(t *testing.T) {
	const newSize = 2*4096 + 100
	tf, data, enc := unmountedForShrink(t, newSize)
	back := tf.b("vm/f")
	if err := unix.Setxattr(back, xattrShrink, []byte(strconv.Itoa(newSize)), 0); err != nil {
		t.Fatal(err)
	}
	bf := openRW(t, back, 0)
	if _, err := bf.WriteAt(enc, int64(objcrypt.CipherOffsetOfBlock(2))); err != nil {
		t.Fatal(err)
	}
	setImmutable(t, bf, true)
	t.Cleanup(func() { setImmutable(t, bf, false); bf.Close() })

	again := newTestFS(t, testOpts{back: tf.back, keys: tf.keys})
	g, err := os.Open(again.m("vm/f"))
	if err != nil {
		t.Fatalf("open with an unsettled truncate record: %v", err)
	}
	head := make([]byte, 2*4096)
	if _, err := g.ReadAt(head, 0); err != nil || !bytes.Equal(head, data[:2*4096]) {
		t.Errorf("blocks before the interrupted one: %v", err)
	}
	if _, err := g.ReadAt(make([]byte, 10), 2*4096); !errors.Is(err, unix.EIO) {
		t.Errorf("the interrupted block reads %v, want EIO", err)
	}
	g.Close()
	if !strings.Contains(again.logs.String(), "cannot settle an interrupted truncate") {
		t.Errorf("log does not say the record could not be settled:\n%s", again.logs.String())
	}
	if _, err := unix.Getxattr(back, xattrShrink, nil); err != nil {
		t.Errorf("record gone although the file is immutable: %v", err)
	}

	setImmutable(t, bf, false)
	again.waitReleased()
	if err := again.srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	third := newTestFS(t, testOpts{back: tf.back, keys: tf.keys})
	checkContent(t, third.m("vm/f"), data[:newSize])
}

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h (x/sys/unix lacks it).
const fsImmutableFL = 0x10

// setImmutable sets or clears the immutable flag of f (chattr +i).
func setImmutable(t *testing.T, f *os.File, on bool) {
	t.Helper()
	fl, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatalf("FS_IOC_GETFLAGS: %v (the test needs a backing filesystem with chattr +i, like ext4)", err)
	}
	if on {
		fl |= fsImmutableFL
	} else {
		fl &^= fsImmutableFL
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, fl); err != nil {
		t.Fatalf("FS_IOC_SETFLAGS: %v", err)
	}
}
