package fs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cryptds/cryptds/journal"
	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestJournalFinishesTornWrite builds the state a daemon killed inside a
// buffered block write leaves: block 1 of a file stored half new (up to
// the page boundary inside it) and half old, and the journal entry of the
// write never ended. The next mount must finish the write: the block
// reads new, nothing fails authentication. The journal must leave alone a
// file that was replaced since (another inode, or another object in the
// same inode).
func TestJournalFinishesTornWrite(t *testing.T) {
	cases := []struct {
		name    string
		replace func(t *testing.T, tf *testFS) // between the kill and the remount
		replay  bool
		// skipLog: the remount logs the entry it leaves alone. Not for
		// the copy: in this process the old inode outlives the rename
		// (the first mount still holds a descriptor of it), so the entry
		// may land there, in no file's name, instead of being refused.
		skipLog bool
	}{
		{"finished", nil, true, false},
		{"file replaced by a copy", func(t *testing.T, tf *testFS) {
			copyObject(t, tf.b("vm/f"), tf.b("vm/f.tmp"))
			if err := os.Rename(tf.b("vm/f.tmp"), tf.b("vm/f")); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"inode now holds another object", func(t *testing.T, tf *testFS) {
			copyObject(t, tf.b("vm/g"), tf.b("vm/f")) // into f's inode
		}, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			jpath := filepath.Join(t.TempDir(), "journal")
			tf := newTestFS(t, testOpts{journal: jpath})
			tf.encDir("vm")
			data := randBytes(3 * 4096)
			mustWrite(t, tf.m("vm/f"), data)
			mustWrite(t, tf.m("vm/g"), randBytes(5000))
			f := openRW(t, tf.m("vm/f"), 0)
			n := nodeOf(t, tf, "vm/f")
			n.mu.Lock()
			o := n.obj
			n.mu.Unlock()
			if o.target == nil {
				t.Fatal("the backing filesystem gave no file handle: nothing is journaled")
			}
			newBlock := randBytes(4096)
			enc, err := o.obj.EncryptBlock(nil, newBlock, 1)
			if err != nil {
				t.Fatal(err)
			}
			target := o.target
			f.Close()
			tf.waitReleased()
			if err := tf.srv.Unmount(); err != nil {
				t.Fatal(err)
			}
			tf.srv.Wait()
			if err := tf.root.Close(); err != nil {
				t.Fatal(err)
			}

			// The killed daemon: its entry taken, its pwrite cut at the
			// page boundary inside block 1, its journal never closed.
			off := int64(objcrypt.CipherOffsetOfBlock(1))
			j, recs, err := journal.Open(jpath, journalSlots, journalBlocks*cbs)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 0 {
				t.Fatalf("a cleanly unmounted journal had %d records", len(recs))
			}
			j.Reset()
			if _, err := j.Begin(target, off, enc); err != nil {
				t.Fatal(err)
			}
			cut := (off/pageSize + 1) * pageSize
			bf := openRW(t, tf.b("vm/f"), 0)
			if _, err := bf.WriteAt(enc[:cut-off], off); err != nil {
				t.Fatal(err)
			}
			torn := make([]byte, cbs)
			if _, err := bf.ReadAt(torn, off); err != nil {
				t.Fatal(err)
			}
			bf.Close()
			if _, err := o.obj.DecryptBlock(nil, torn, 1); err == nil {
				t.Fatal("the torn block authenticates: the test built no crash state")
			}
			j.Close() // kept: an entry is in flight
			if c.replace != nil {
				c.replace(t, tf)
			}
			before, err := os.ReadFile(tf.b("vm/f"))
			if err != nil {
				t.Fatal(err)
			}

			again := newTestFS(t, testOpts{back: tf.back, keys: tf.keys, journal: jpath})
			logs := again.logs.String()
			if !c.replay {
				if c.skipLog && !strings.Contains(logs, "cannot finish a write") {
					t.Errorf("log lacks the skipped write:\n%s", logs)
				}
				if after, _ := os.ReadFile(tf.b("vm/f")); !bytes.Equal(after, before) {
					t.Error("the journal wrote into a file that is not the one it was written for")
				}
				return
			}
			if !strings.Contains(logs, "finished the block writes") {
				t.Errorf("log lacks the finished write:\n%s", logs)
			}
			want := append(append(append([]byte(nil), data[:4096]...), newBlock...), data[8192:]...)
			checkContent(t, again.m("vm/f"), want)
			if strings.Contains(again.logs.String(), "failed authentication") {
				t.Errorf("a block failed authentication:\n%s", again.logs.String())
			}
		})
	}
}

// copyObject writes backing file from's bytes and header xattr into to
// (created, or rewritten in place).
func copyObject(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := getxattrAlloc(from, xattrHeader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(to, xattrHeader, hdr, 0); err != nil {
		t.Fatal(err)
	}
}

// TestJournalEntries: a write that stays inside one backing page cannot
// be cut by a kill and takes no journal entry; one across a page boundary
// holds an entry while its pwrite runs and ends it; one larger than a
// slot is written in slot-sized pieces, each journaled.
func TestJournalEntries(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	mustWrite(t, tf.m("vm/f"), randBytes(100))
	f := openRW(t, tf.m("vm/f"), 0)
	defer f.Close()
	n := nodeOf(t, tf, "vm/f")
	n.mu.Lock()
	o := n.obj
	n.mu.Unlock()
	cf := &cryptFile{n: n, o: o, r: tf.root, fd: -1}
	var held []int // entries in flight during each pwrite
	pw := func(fd int, p []byte, off int64) (int, error) {
		held = append(held, tf.root.journal.InFlight())
		return len(p), nil
	}
	const start = objcrypt.HeaderRegionSize
	cases := []struct {
		off, n int64
		held   []int
	}{
		{start, 100, []int{0}},
		{start + 4000, 200, []int{1}},
		{start, journalBlocks*cbs + cbs, []int{1, 1}},
		{start + 4096 - cbs/2, cbs / 2, []int{0}}, // ends exactly at the page boundary
	}
	for _, c := range cases {
		held = nil
		if w, err := cf.storeAt(pw, make([]byte, c.n), c.off); err != nil || int64(w) != c.n {
			t.Fatalf("storeAt %d bytes at %d: %d, %v", c.n, c.off, w, err)
		}
		if fmt.Sprint(held) != fmt.Sprint(c.held) {
			t.Errorf("storeAt %d bytes at %d: entries held per pwrite %v, want %v", c.n, c.off, held, c.held)
		}
		if k := tf.root.journal.InFlight(); k != 0 {
			t.Errorf("storeAt %d bytes at %d left %d entries", c.n, c.off, k)
		}
	}
}

// TestJournalHoldsNoPlaintext: the journal file holds stored blocks, never
// the plaintext written through the mount, and is private to root.
func TestJournalHoldsNoPlaintext(t *testing.T) {
	jpath := filepath.Join(t.TempDir(), "journal")
	tf := newTestFS(t, testOpts{journal: jpath})
	tf.encDir("vm")
	secret := bytes.Repeat([]byte("JOURNAL-SECRET-"), 4000)
	f := openRW(t, tf.m("vm/f"), 0)
	defer f.Close()
	for off := int64(0); off < 200000; off += 7001 { // unaligned: journaled read-modify-writes
		if _, err := f.WriteAt(secret[:5000], off); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("journal mode %v, want 0600", st.Mode().Perm())
	}
	img, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, []byte("JOURNAL-SECRET")) {
		t.Fatal("plaintext in the journal")
	}
	if bytes.Count(img, []byte{0}) == len(img) {
		t.Fatal("the journal was never written: the test proves nothing")
	}
}
