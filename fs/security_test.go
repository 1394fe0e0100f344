package fs

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestPlaintextNeverStored writes a recognisable pattern through every
// write path and searches every backing file for it.
func TestPlaintextNeverStored(t *testing.T) {
	tf := newTestFS(t, testOpts{pool: objcrypt.NewPool(2, 0)})
	tf.encDir("vm")
	marker := []byte("CRYPTDS-PLAINTEXT-MARKER-")
	pattern := bytes.Repeat(marker, 4096/len(marker)+1)
	big := bytes.Repeat(pattern, 300) // ~1.2 MiB

	mustWrite(t, tf.m("vm/whole"), big)
	f, err := os.OpenFile(tf.m("vm/edits"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 17, 4095, 9000, 70000} {
		if _, err := f.WriteAt(pattern[:3000], off); err != nil {
			t.Fatal(err)
		}
	}
	f.Truncate(5000)
	f.Truncate(50000)
	f.WriteAt(pattern, 60000)
	f.Sync()
	f.Close()
	d, err := os.OpenFile(tf.m("vm/direct"), os.O_CREATE|os.O_RDWR|syscall.O_DIRECT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.WriteAt(big[:1<<20], 0)
	d.Close()
	tfd, err := unix.Open(tf.m("vm"), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Pwrite(tfd, pattern, 0)
	if err := linkEmptyPath(tfd, tf.m("vm/tmpfile")); err != nil {
		t.Fatal(err)
	}
	unix.Close(tfd)
	os.Link(tf.m("vm/whole"), tf.m("vm/link"))
	os.Rename(tf.m("vm/edits"), tf.m("vm/renamed"))

	if got := mustRead(t, tf.m("vm/whole")); !bytes.Equal(got, big) {
		t.Fatal("read back differs")
	}
	filepath.WalkDir(tf.back, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, marker[:16]) {
			t.Errorf("plaintext found in backing file %s", p)
		}
		return nil
	})
}

// TestTamperedBlock flips a byte in one stored block: reads of that block
// fail with EIO and are logged with the block number; everything else works.
func TestTamperedBlock(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	data := randBytes(3 * 4096)
	mustWrite(t, tf.m("vm/f"), data)
	mustWrite(t, tf.m("vm/g"), data)

	bf, err := os.OpenFile(tf.b("vm/f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(objcrypt.CipherOffsetOfBlock(1)) + 100
	b := make([]byte, 1)
	bf.ReadAt(b, off)
	b[0] ^= 0x40
	bf.WriteAt(b, off)
	bf.Close()

	f, err := os.OpenFile(tf.m("vm/f"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of tampered block: %v, want EIO", err)
	}
	for _, blk := range []int64{0, 2} {
		if _, err := f.ReadAt(buf, blk*4096); err != nil || !bytes.Equal(buf, data[blk*4096:(blk+1)*4096]) {
			t.Fatalf("read of good block %d: %v", blk, err)
		}
	}
	if !bytes.Equal(mustRead(t, tf.m("vm/g")), data) {
		t.Fatal("other file affected")
	}
	logs := tf.logs.String()
	if !strings.Contains(logs, "block failed authentication") || !strings.Contains(logs, "block=1") || !strings.Contains(logs, "vm/f") {
		t.Fatalf("log does not name file and block: %s", logs)
	}
	if tf.root.Stats().AuthFailures == 0 {
		t.Fatal("auth failure not counted")
	}
}

func TestHeaderMismatch(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	mustWrite(t, tf.m("vm/a"), []byte("aaaa"))
	mustWrite(t, tf.m("vm/b"), []byte("bbbb"))
	tf.waitReleased()
	// give a the header xattr of b: both copies parse, but disagree
	hb, err := getxattrAlloc(tf.b("vm/b"), xattrHeader)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(tf.b("vm/a"), xattrHeader, hb, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(tf.m("vm/a")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("open with mismatched headers: %v, want EIO", err)
	}
	if !strings.Contains(tf.logs.String(), "disagree") {
		t.Fatalf("no log: %s", tf.logs.String())
	}
	if string(mustRead(t, tf.m("vm/b"))) != "bbbb" {
		t.Fatal("other file broken")
	}
}

func TestKeyErrors(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	mustWrite(t, tf.m("vm/a"), []byte("aaaa"))
	tf.waitReleased()
	tf.keys.setFail(errors.New("KMS unreachable"))
	if _, err := os.ReadFile(tf.m("vm/a")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("open without KEK: %v, want EIO", err)
	}
	tf.keys.setFail(&os.SyscallError{Syscall: "kms", Err: syscall.EACCES})
	if _, err := os.ReadFile(tf.m("vm/a")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("open with denied KEK: %v, want EACCES", err)
	}
	tf.keys.setFail(nil)
	// wrong KEK material: the DEK does not unwrap
	hdrRaw, _ := getxattrAlloc(tf.b("vm/a"), xattrHeader)
	h, _ := objcrypt.ParseHeader(hdrRaw)
	tf.keys.mu.Lock()
	tf.keys.keys[h.KEKID] = make(objcrypt.Key, 32)
	tf.keys.mu.Unlock()
	if _, err := os.ReadFile(tf.m("vm/a")); !errors.Is(err, syscall.EKEYREJECTED) {
		t.Fatalf("open with wrong KEK: %v, want EKEYREJECTED", err)
	}
	logs := tf.logs.String()
	if !strings.Contains(logs, "kek="+h.KEKID) || !strings.Contains(logs, "vm/a") {
		t.Fatalf("log does not name file and key: %s", logs)
	}
	if tf.root.Stats().KeyErrors != 3 {
		t.Fatalf("key errors = %d", tf.root.Stats().KeyErrors)
	}
}
