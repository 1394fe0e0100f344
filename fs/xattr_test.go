package fs

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func getx(t *testing.T, path, name string) (string, error) {
	t.Helper()
	b, err := getxattrAlloc(path, name)
	return string(b), err
}

func TestHeaderXattrHiddenAndProtected(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	f := tf.m("vm/disk.raw")
	mustWrite(t, f, []byte("data"))
	if err := unix.Setxattr(f, "user.note", []byte("v"), 0); err != nil {
		t.Fatalf("user xattr set: %v", err)
	}
	if v, err := getx(t, tf.b("vm/disk.raw"), "user.note"); err != nil || v != "v" {
		t.Fatalf("user xattr not passed through: %q %v", v, err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Listxattr(f, buf)
	if err != nil {
		t.Fatal(err)
	}
	if list := string(buf[:n]); strings.Contains(list, "cryptds") || !strings.Contains(list, "user.note") {
		t.Fatalf("listxattr = %q", list)
	}
	if _, err := unix.Getxattr(f, xattrHeader, buf); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("getxattr hdr through mount: %v, want ENODATA", err)
	}
	for _, p := range []string{f, tf.m("vm")} {
		for _, name := range []string{xattrHeader, xattrShrink, "user.cryptds.other", xattrStatus} {
			if err := unix.Setxattr(p, name, []byte("x"), 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("setxattr %s on %s: %v, want EPERM", name, p, err)
			}
			if err := unix.Removexattr(p, name); !errors.Is(err, unix.EPERM) {
				t.Errorf("removexattr %s on %s: %v, want EPERM", name, p, err)
			}
		}
	}
	if err := unix.Setxattr(f, xattrPolicy, []byte("encrypted"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("policy on a file: %v, want EPERM", err)
	}
	if err := unix.Removexattr(f, "user.note"); err != nil {
		t.Fatal(err)
	}
	// still encrypted and readable
	if string(mustRead(t, f)) != "data" || !isEncryptedBacking(t, tf.b("vm/disk.raw")) {
		t.Fatal("file damaged by xattr traffic")
	}
}

func TestPolicyXattrs(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	d := tf.m("vm")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if v, _ := getx(t, d, xattrPolicy); v != "none" {
		t.Fatalf("policy of new dir = %q", v)
	}
	mustWrite(t, tf.m("vm/old.txt"), []byte("plain before"))
	if err := unix.Setxattr(d, xattrPolicy, []byte("bogus"), 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("bogus policy: %v", err)
	}
	if err := unix.Setxattr(d, xattrPolicy, []byte("encrypted\n"), 0); err != nil {
		t.Fatal(err)
	}
	v, _ := getx(t, d, xattrPolicy)
	if !strings.HasPrefix(v, "encrypted kek=kek-1 vm=") {
		t.Fatalf("policy = %q", v)
	}
	if err := unix.Setxattr(d, xattrPolicy, []byte("encrypted"), 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second encrypt: %v, want EEXIST", err)
	}
	mustWrite(t, tf.m("vm/new.vmdk"), []byte("secret"))
	if err := os.Mkdir(tf.m("vm/snap"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, tf.m("vm/snap/s1"), []byte("secret2"))
	if !isEncryptedBacking(t, tf.b("vm/new.vmdk")) || !isEncryptedBacking(t, tf.b("vm/snap/s1")) || isEncryptedBacking(t, tf.b("vm/old.txt")) {
		t.Fatal("wrong encryption state of files")
	}
	if v, _ := getx(t, d, xattrStatus); v != "mixed encrypted=2 plain=1" {
		t.Fatalf("status = %q", v)
	}
	if v, _ := getx(t, tf.m("vm/snap"), xattrStatus); v != "encrypted objects=1" {
		t.Fatalf("status of snap = %q", v)
	}
	if err := unix.Setxattr(d, xattrPolicy, []byte("none"), 0); err != nil {
		t.Fatal(err)
	}
	if v, _ := getx(t, d, xattrPolicy); v != "none" {
		t.Fatalf("policy after none = %q", v)
	}
	mustWrite(t, tf.m("vm/after.txt"), []byte("plain again"))
	if isEncryptedBacking(t, tf.b("vm/after.txt")) {
		t.Fatal("file created after policy removal is encrypted")
	}
	if string(mustRead(t, tf.m("vm/new.vmdk"))) != "secret" {
		t.Fatal("existing encrypted file unreadable after policy removal")
	}
	if v, _ := getx(t, tf.m("."), xattrStatus); v != "mixed encrypted=2 plain=2" {
		t.Fatalf("root status = %q", v)
	}
	if _, err := getx(t, tf.m("vm/new.vmdk"), xattrPolicy); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("policy xattr on a file: %v", err)
	}
}

// TestGarbagePolicy: a garbage policy xattr on a recorded VM directory
// changes nothing (the mount's record decides: new files are still
// encrypted, and the difference is logged); on a directory the mount does
// not know as a VM it is refused (no file is created there), and "none"
// clears it.
func TestGarbagePolicy(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	mustWrite(t, tf.m("vm/a"), []byte("still here"))
	if err := unix.Setxattr(tf.b("vm"), xattrPolicy, []byte(`{"v":1,"garbage`), 0); err != nil {
		t.Fatal(err)
	}
	if string(mustRead(t, tf.m("vm/a"))) != "still here" {
		t.Fatal("existing file not served under a garbage policy")
	}
	if v, _ := getx(t, tf.m("vm"), xattrPolicy); !strings.HasPrefix(v, "encrypted ") {
		t.Fatalf("policy text of a recorded VM = %q", v)
	}
	mustWrite(t, tf.m("vm/b"), []byte("x"))
	if !isEncryptedBacking(t, tf.b("vm/b")) {
		t.Fatal("a file created under a garbage policy of a recorded VM is not encrypted")
	}
	if !strings.Contains(tf.logs.String(), "differs from the mount's record") {
		t.Fatalf("no log line: %s", tf.logs.String())
	}

	os.Mkdir(tf.m("other"), 0o755)
	if err := unix.Setxattr(tf.b("other"), xattrPolicy, []byte(`{"v":1,"garbage`), 0); err != nil {
		t.Fatal(err)
	}
	if v, _ := getx(t, tf.m("other"), xattrPolicy); !strings.HasPrefix(v, "invalid ") {
		t.Fatalf("policy text = %q", v)
	}
	if err := os.WriteFile(tf.m("other/b"), []byte("x"), 0o644); !errors.Is(err, unix.EIO) {
		t.Fatalf("create under garbage policy: %v, want EIO", err)
	}
	if _, err := os.Stat(tf.b("other/b")); !os.IsNotExist(err) {
		t.Fatal("a file was left behind")
	}
	if !strings.Contains(tf.logs.String(), "unusable encryption policy") {
		t.Fatalf("no log line: %s", tf.logs.String())
	}
	if err := unix.Setxattr(tf.m("vm"), xattrPolicy, []byte("encrypted"), 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("encrypt over garbage: %v", err)
	}
	if err := unix.Setxattr(tf.m("other"), xattrPolicy, []byte("none"), 0); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, tf.m("other/b"), []byte("x"))
}
