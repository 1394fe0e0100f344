package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	"golang.org/x/sys/unix"
)

// copyBacking copies a backing file with its xattrs, as an attacker with
// write access to the backing store would (cp --preserve=xattr).
func copyBacking(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if raw, err := getxattrAlloc(from, xattrHeader); err == nil {
		if err := unix.Setxattr(to, xattrHeader, raw, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPlainObjectInVMRefused: a plain object inside an encrypted VM is
// never served, whatever put it there (planted under a name the VM will
// create, the object replaced by an empty plain file, header region and
// xattr removed), and O_CREAT/O_TRUNC of such a name is refused too, so
// no plaintext write reaches the backing store.
func TestPlainObjectInVMRefused(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	mustWrite(t, tf.m("vm/disk"), bytes.Repeat([]byte("D"), 9000))
	// Replace the object by an empty plain file; plant a save file.
	if err := os.Remove(tf.b("vm/disk")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, tf.b("vm/disk"), nil)
	mustWrite(t, tf.b("vm/suspend.save"), []byte("planted"))
	// An object whose header region was zeroed and xattr removed.
	mustWrite(t, tf.m("vm/nvram"), bytes.Repeat([]byte("N"), 5000))
	raw, _ := os.ReadFile(tf.b("vm/nvram"))
	copy(raw, make([]byte, objcrypt.HeaderRegionSize))
	if err := os.WriteFile(tf.b("vm/nvram"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Removexattr(tf.b("vm/nvram"), xattrHeader); err != nil {
		t.Fatal(err)
	}
	tf.waitReleased()
	// Until the kernel's entry cache expires, "vm/disk" still names the
	// old (now unlinked, encrypted) inode; wait it out so the next open
	// looks up the planted file.
	time.Sleep(attrTimeout + 100*time.Millisecond)
	for _, name := range []string{"vm/disk", "vm/suspend.save", "vm/nvram"} {
		for _, flags := range []int{os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_CREATE | os.O_TRUNC} {
			f, err := os.OpenFile(tf.m(name), flags, 0o644)
			if err == nil {
				f.Write([]byte("PLAINTEXT-LEAK"))
				f.Close()
				t.Errorf("open %s flags %#x of a plain object inside an encrypted VM succeeded", name, flags)
				continue
			}
			if !errors.Is(err, unix.EIO) {
				t.Errorf("open %s flags %#x: %v, want EIO", name, flags, err)
			}
		}
	}
	if st, err := os.Stat(tf.b("vm/disk")); err != nil || st.Size() != 0 {
		t.Errorf("the planted empty file was written: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(tf.b("vm/suspend.save")); string(b) != "planted" {
		t.Errorf("the planted file was changed: %q", b)
	}
	if !strings.Contains(tf.logs.String(), "plain object inside an encrypted VM") {
		t.Errorf("no log line:\n%s", tf.logs.String())
	}
	// New names are still created encrypted, and unlink works.
	mustWrite(t, tf.m("vm/new.log"), []byte("fresh"))
	if !isEncryptedBacking(t, tf.b("vm/new.log")) {
		t.Error("a new file in the VM is not encrypted")
	}
	if err := os.Remove(tf.m("vm/suspend.save")); err != nil {
		t.Errorf("remove a planted file through the mount: %v", err)
	}
}

// TestVanishedPolicyStillEncrypts: removing a VM directory's policy xattr
// on the backing store (mounted, or between mounts with the record kept)
// does not make new files plain: the mount's record still knows the VM.
func TestVanishedPolicyStillEncrypts(t *testing.T) {
	record := filepath.Join(t.TempDir(), "vms.json")
	tf := newTestFS(t, testOpts{vmRecord: record})
	tf.encDir("vm")
	os.Mkdir(tf.m("vm/snap"), 0o755)
	for _, d := range []string{"vm", "vm/snap"} {
		if err := unix.Removexattr(tf.b(d), xattrPolicy); err != nil {
			t.Fatal(err)
		}
	}
	secret := []byte("VANISHED-POLICY-SECRET")
	mustWrite(t, tf.m("vm/after.vmx"), secret)
	mustWrite(t, tf.m("vm/snap/delta"), secret)
	for _, p := range []string{"vm/after.vmx", "vm/snap/delta"} {
		if !isEncryptedBacking(t, tf.b(p)) {
			t.Errorf("%s was created in plaintext after the policy vanished", p)
		}
	}
	if !strings.Contains(tf.logs.String(), "policy xattr of a directory of an encrypted VM is gone") {
		t.Errorf("no log line:\n%s", tf.logs.String())
	}
	// A second mount with the same record: still encrypted.
	again := newTestFS(t, testOpts{back: tf.back, keys: tf.keys, vmRecord: record})
	mustWrite(t, again.m("vm/later.log"), secret)
	if !isEncryptedBacking(t, again.b("vm/later.log")) {
		t.Error("created in plaintext by a new mount with the record")
	}
	if v, _ := getx(t, again.m("vm"), xattrPolicy); !strings.HasPrefix(v, "encrypted") {
		t.Errorf("policy text %q", v)
	}
	if !bytes.Equal(mustRead(t, again.m("vm/after.vmx")), secret) {
		t.Error("content")
	}
	// A rekey writes the policy back.
	if err := setPolicyValue(again.m("vm"), "rekey"); err != nil {
		t.Fatal(err)
	}
	if _, err := getxattrAlloc(again.b("vm/snap"), xattrPolicy); err != nil {
		t.Errorf("rekey did not rewrite the vanished policy: %v", err)
	}
}

// TestForeignObjectRefused: one VM's object copied (with its xattr) into
// another VM's directory or into a plain directory is not decrypted there.
func TestForeignObjectRefused(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vmA")
	tf.encDir("vmB")
	os.Mkdir(tf.m("plain"), 0o755)
	mustWrite(t, tf.m("vmB/disk"), []byte("VM B SECRET"))
	copyBacking(t, tf.b("vmB/disk"), tf.b("vmA/stolen"))
	copyBacking(t, tf.b("vmB/disk"), tf.b("plain/stolen"))
	for _, p := range []string{"vmA/stolen", "plain/stolen"} {
		if b, err := os.ReadFile(tf.m(p)); !errors.Is(err, unix.EIO) {
			t.Errorf("%s: read %q, %v; want EIO", p, b, err)
		}
	}
	if !strings.Contains(tf.logs.String(), "refusing an encrypted object outside its VM") {
		t.Errorf("no log line:\n%s", tf.logs.String())
	}
	if !bytes.Equal(mustRead(t, tf.m("vmB/disk")), []byte("VM B SECRET")) {
		t.Error("the object in its own VM")
	}
	// A hard link on the backing store is one inode under two names: it
	// is refused under both (the mount cannot tell which name an open
	// came through), never served in the other VM.
	if err := os.Link(tf.b("vmB/disk"), tf.b("vmA/linked")); err != nil {
		t.Fatal(err)
	}
	tf.waitReleased()
	for _, p := range []string{"vmA/linked", "vmB/disk"} {
		if b, err := os.ReadFile(tf.m(p)); !errors.Is(err, unix.EIO) {
			t.Errorf("%s (hard-linked into another VM): read %q, %v; want EIO", p, b, err)
		}
	}
}

// TestCopiedPolicyRefused: another VM's policy copied onto a directory
// creates nothing there and does not let a shred or rekey act on it.
func TestCopiedPolicyRefused(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vmB")
	mustWrite(t, tf.m("vmB/disk"), []byte("B"))
	os.Mkdir(tf.m("evil"), 0o755)
	raw, err := getxattrAlloc(tf.b("vmB"), xattrPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(tf.b("evil"), xattrPolicy, raw, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tf.m("evil/f"), []byte("x"), 0o644); !errors.Is(err, unix.EIO) {
		t.Errorf("create under a copied policy: %v, want EIO", err)
	}
	pol := backingPolicy(t, tf.b("vmB"))
	for _, op := range []string{"shred", "rekey"} {
		if err := setPolicyValue(tf.m("evil"), op); err == nil {
			t.Errorf("%s of a directory with a copied policy succeeded", op)
		}
	}
	if !tf.keys.has(pol.KEKID) {
		t.Fatal("the other VM's KEK was destroyed")
	}
	if !bytes.Equal(mustRead(t, tf.m("vmB/disk")), []byte("B")) {
		t.Error("the other VM")
	}
}

// TestShredOnlyOwnKeys: objects and policies of another VM placed in a
// VM's tree (copied, hard-linked) never make a shred destroy that VM's
// keys; every KEK the VM had (before rekeys, and ones the KMS holds under
// its name) is destroyed.
func TestShredOnlyOwnKeys(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vmA")
	tf.encDir("vmB")
	mustWrite(t, tf.m("vmA/disk"), []byte("A"))
	mustWrite(t, tf.m("vmB/disk"), []byte("B"))
	first := backingPolicy(t, tf.b("vmA"))
	if err := setPolicyValue(tf.m("vmA"), "rekey"); err != nil {
		t.Fatal(err)
	}
	polA := backingPolicy(t, tf.b("vmA"))
	polB := backingPolicy(t, tf.b("vmB"))
	// A KEK of VM A's name the record does not know (a rekey on another
	// host): found by its name at the KMS.
	elsewhere, err := tf.keys.NewKEK(context.Background(), objcrypt.KEKName("ds1", polA.VMID))
	if err != nil {
		t.Fatal(err)
	}
	// The attacks: B's object copied and hard-linked into A, B's policy
	// copied onto a subdirectory of A.
	copyBacking(t, tf.b("vmB/disk"), tf.b("vmA/b-copy"))
	if err := os.Link(tf.b("vmB/disk"), tf.b("vmA/b-link")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(tf.b("vmA/sub"), 0o755)
	raw, _ := getxattrAlloc(tf.b("vmB"), xattrPolicy)
	unix.Setxattr(tf.b("vmA/sub"), xattrPolicy, raw, 0)

	if err := setPolicyValue(tf.m("vmA"), "shred"); err != nil {
		t.Fatalf("shred: %v", err)
	}
	for _, id := range []string{first.KEKID, polA.KEKID, elsewhere} {
		if tf.keys.has(id) {
			t.Errorf("VM A's KEK %s survived the shred", id)
		}
	}
	if !tf.keys.has(polB.KEKID) {
		t.Fatal("the shred of VM A destroyed VM B's KEK")
	}
	if !bytes.Equal(mustRead(t, tf.m("vmB/disk")), []byte("B")) {
		t.Error("VM B is no longer readable")
	}
	if !strings.Contains(tf.logs.String(), "an object of another VM in this VM's tree") {
		t.Errorf("no report of the foreign object:\n%s", tf.logs.String())
	}
	keys, err := getx(t, tf.m("vmA"), xattrKeys)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(keys, "state=destroyed") != 3 || !strings.Contains(keys, "state=shredded") {
		t.Errorf("keys after shred:\n%s", keys)
	}
	if _, err := os.ReadFile(tf.m("vmA/disk")); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("read after shred: %v", err)
	}
	if err := os.WriteFile(tf.m("vmA/new"), []byte("x"), 0o644); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("create in a shredded VM: %v, want EKEYREVOKED", err)
	}
}

// TestVMRecordFollowsRenamesAndRmdir: renaming a VM directory through the
// mount keeps it encrypted under its new name; removing it forgets it, so
// a new plain directory of the same name is plain.
func TestVMRecordFollowsRenamesAndRmdir(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("web01")
	if err := os.Rename(tf.m("web01"), tf.m("web02")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Removexattr(tf.b("web02"), xattrPolicy); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, tf.m("web02/f"), []byte("x"))
	if !isEncryptedBacking(t, tf.b("web02/f")) {
		t.Error("a renamed VM directory is no longer encrypted for the mount")
	}
	if err := os.Remove(tf.m("web02/f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tf.m("web02")); err != nil {
		t.Fatal(err)
	}
	if _, ok := tf.root.vms.Lookup("web02"); ok {
		t.Fatal("a removed VM directory is still recorded")
	}
	os.Mkdir(tf.m("web02"), 0o755)
	mustWrite(t, tf.m("web02/f"), []byte("x"))
	if isEncryptedBacking(t, tf.b("web02/f")) {
		t.Error("a new plain directory inherited a removed VM's encryption")
	}
}

// TestDecryptedVMServesItsObjects: after "none" the VM's own encrypted
// objects stay readable (vm decrypt copies them), new files are plain,
// and a subdirectory's policy can be removed; on an encrypted VM the
// subdirectory's cannot.
func TestDecryptedVMServesItsObjects(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	os.Mkdir(tf.m("vm/sub"), 0o755)
	mustWrite(t, tf.m("vm/disk"), []byte("enc"))
	if err := setPolicyValue(tf.m("vm/sub"), "none"); !errors.Is(err, unix.EINVAL) {
		t.Errorf("none on a subdirectory of an encrypted VM: %v, want EINVAL", err)
	}
	if err := setPolicyValue(tf.m("vm"), "none"); err != nil {
		t.Fatal(err)
	}
	if err := setPolicyValue(tf.m("vm/sub"), "none"); err != nil {
		t.Fatal(err)
	}
	if string(mustRead(t, tf.m("vm/disk"))) != "enc" {
		t.Error("the VM's own object after decrypt")
	}
	mustWrite(t, tf.m("vm/plain"), []byte("p"))
	if isEncryptedBacking(t, tf.b("vm/plain")) {
		t.Error("new file in a decrypted VM is encrypted")
	}
	v, _ := tf.root.vms.Lookup("vm")
	if v.State != vmreg.Decrypted {
		t.Errorf("record state %q", v.State)
	}
	// Encrypting again makes a new VM.
	if err := setPolicyValue(tf.m("vm"), "encrypted"); err != nil {
		t.Fatal(err)
	}
	if w, _ := tf.root.vms.Lookup("vm"); w.ID == v.ID || w.State != vmreg.Encrypted {
		t.Errorf("re-encrypted record %+v", w)
	}
}
