//go:build integration

package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/objcrypt"
)

// The attacks of issue "close the holes an attacker on the backing store
// or a local user can use", each exactly as described there: as root on
// the backing store (the threat model's attacker), or as an unprivileged
// user through an --allow-other mount. THREAT-MODEL.md names these tests.

const (
	policyAttr = objcrypt.XattrPolicy
	headerAttr = objcrypt.XattrHeader
)

// encryptEmptyVM makes an encrypted VM directory through the mount.
func encryptEmptyVM(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := xattr.Set(dir, policyAttr, []byte("encrypted")); err != nil {
		t.Fatalf("encrypt %s: %v", dir, err)
	}
}

// backingPolicyOf parses the policy xattr of a backing directory.
func backingPolicyOf(t *testing.T, dir string) *objcrypt.Policy {
	t.Helper()
	raw, err := xattr.Get(dir, policyAttr)
	if err != nil {
		t.Fatalf("policy of %s: %v", dir, err)
	}
	p, err := objcrypt.ParsePolicy(raw)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// backingHeaderOf parses the header xattr of a backing file.
func backingHeaderOf(t *testing.T, path string) *objcrypt.Header {
	t.Helper()
	raw, err := xattr.Get(path, headerAttr)
	if err != nil {
		t.Fatalf("header of %s: %v", path, err)
	}
	h, err := objcrypt.ParseHeader(raw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// copyWithXattrs copies a backing file as an attacker would, header
// xattr included.
func copyWithXattrs(t *testing.T, from, to string) {
	t.Helper()
	run(t, "cp", "--preserve=xattr", from, to)
}

func writeBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAttackDatastoreIDPathTraversal: a datastore id xattr that names a
// path makes the mount (root) open, truncate and delete a host file. It
// must be refused, exit 3, the host file untouched.
func TestAttackDatastoreIDPathTraversal(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	victim := filepath.Join(state, "victim")
	writeBytes(t, victim, []byte("HOST FILE THAT MUST SURVIVE"))
	// journal/<id> and keycache/<id> resolve to state/victim.
	if err := xattr.Set(backing, objcrypt.XattrDatastore, []byte("../victim")); err != nil {
		t.Fatal(err)
	}
	// A mount that is not refused would run in the foreground: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "mount", "--dev", "--state-dir", state, "--key-cache", "disk", backing, mnt)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if isMounted(mnt) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
	code, stderr := -1, errb.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	if code != 3 || !strings.Contains(stderr, objcrypt.XattrDatastore) {
		t.Fatalf("mount with a traversal datastore id: exit %d, want 3 naming the xattr\n%s", code, stderr)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "HOST FILE THAT MUST SURVIVE" {
		t.Fatalf("host file after the mount attempt: %q, %v", b, err)
	}
	_, stderr, code = cli(t, "fsck", "--no-keys", "--state-dir", state, backing)
	if code != 3 {
		t.Fatalf("fsck with a traversal datastore id: exit %d, want 3\n%s", code, stderr)
	}
}

// TestAttackUnprivilegedPolicyOps: a local user who may write a
// directory's user xattrs through an --allow-other mount must not create
// KEKs, rekey or shred.
func TestAttackUnprivilegedPolicyOps(t *testing.T) {
	requireRoot(t)
	require(t, haveCmd("setpriv") && haveCmd("setfattr"), "setpriv and setfattr")
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state, "--allow-other")
	// The mountpoint's parents must be searchable by nobody.
	for d := filepath.Dir(mnt); d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	own := filepath.Join(mnt, "users-dir")
	vm := filepath.Join(mnt, "vm")
	for _, d := range []string{own, vm} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	if err := xattr.Set(vm, policyAttr, []byte("encrypted")); err != nil {
		t.Fatal(err)
	}
	writeBytes(t, filepath.Join(vm, "disk"), []byte("VM DATA"))
	asNobody := func(dir, value string) (string, error) {
		out, err := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
			"setfattr", "-n", policyAttr, "-v", value, dir).CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct{ dir, value string }{{own, "encrypted"}, {vm, "rekey"}, {vm, "rekey-deep"}, {vm, "shred"}, {vm, "none"}} {
		out, err := asNobody(c.dir, c.value)
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("%s on %s as nobody: %v %s; want EPERM", c.value, filepath.Base(c.dir), err, out)
		}
	}
	if _, err := xattr.Get(filepath.Join(backing, "users-dir"), policyAttr); err == nil {
		t.Error("an unprivileged user created a policy")
	}
	if b, err := os.ReadFile(filepath.Join(vm, "disk")); err != nil || string(b) != "VM DATA" {
		t.Fatalf("VM after the refused operations: %q, %v", b, err)
	}
	m.stop()
	if !strings.Contains(m.stderr.String(), "only root may change policies or keys") {
		t.Errorf("no log line for the refusals:\n%s", m.stderr.String())
	}
}

// TestAttackShredOtherVMsKeys: another VM's policy or objects (copies,
// hard links) put into a VM's directory on the backing store must not make
// a shred there destroy the other VM's keys; the shred destroys every KEK
// of its own VM, those from before a rekey included, and lists them.
func TestAttackShredOtherVMsKeys(t *testing.T) {
	requireRoot(t)
	py := needPyKMIP(t)
	kms := pyKMS(py)
	backing, mnt, state := dirs(t)
	args := append(kms.flags(state), "--key-cache", "memory")
	m := startMount(t, backing, mnt, args...)
	vm1, vm2 := filepath.Join(mnt, "vm1"), filepath.Join(mnt, "vm2")
	encryptEmptyVM(t, vm1)
	encryptEmptyVM(t, vm2)
	writeBytes(t, filepath.Join(vm1, "disk"), []byte("VM1"))
	writeBytes(t, filepath.Join(vm2, "disk"), []byte("VM2 MUST SURVIVE"))
	writeBytes(t, filepath.Join(vm2, "nvram"), []byte("VM2 NVRAM"))
	first := backingPolicyOf(t, filepath.Join(backing, "vm1"))
	mustCLI(t, "vm", "rekey", vm1)
	second := backingPolicyOf(t, filepath.Join(backing, "vm1"))
	pol2 := backingPolicyOf(t, filepath.Join(backing, "vm2"))
	if first.KEKID == second.KEKID {
		t.Fatal("rekey kept the KEK")
	}
	// The attacks, on the backing store.
	b1, b2 := filepath.Join(backing, "vm1"), filepath.Join(backing, "vm2")
	copyWithXattrs(t, filepath.Join(b2, "disk"), filepath.Join(b1, "copied-disk"))
	if err := os.Link(filepath.Join(b2, "nvram"), filepath.Join(b1, "linked-nvram")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(b1, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, _ := xattr.Get(b2, policyAttr)
	if err := xattr.Set(filepath.Join(b1, "sub"), policyAttr, raw); err != nil {
		t.Fatal(err)
	}
	out := mustCLI(t, "vm", "shred", "--yes", vm1)
	for _, id := range []string{first.KEKID, second.KEKID} {
		if !strings.Contains(out, "destroyed kek "+id+":") {
			t.Errorf("shred output does not list KEK %s:\n%s", id, out)
		}
	}
	if strings.Contains(out, "destroyed kek "+pol2.KEKID+":") {
		t.Errorf("shred output lists VM 2's KEK:\n%s", out)
	}
	m.stop()

	cl, done := kms.client(t, state)
	defer done()
	ctx := context.Background()
	for _, id := range []string{first.KEKID, second.KEKID} {
		if st, err := cl.State(ctx, id); err == nil && st == kmipclient.StateActive {
			t.Errorf("VM 1's KEK %s is still active after the shred", id)
		}
	}
	if st, err := cl.State(ctx, pol2.KEKID); err != nil || st != kmipclient.StateActive {
		t.Fatalf("VM 2's KEK %s after VM 1's shred: %v, %v (want active)", pol2.KEKID, st, err)
	}
	// A fresh mount (no cached keys) still reads VM 2 once the attacker's
	// hard link is gone.
	if err := os.Remove(filepath.Join(b1, "linked-nvram")); err != nil {
		t.Fatal(err)
	}
	m2 := startMount(t, backing, mnt, args...)
	defer m2.stop()
	for name, want := range map[string]string{"disk": "VM2 MUST SURVIVE", "nvram": "VM2 NVRAM"} {
		if b, err := os.ReadFile(filepath.Join(vm2, name)); err != nil || string(b) != want {
			t.Errorf("VM 2 %s after VM 1's shred: %q, %v", name, b, err)
		}
	}
	if _, err := os.ReadFile(filepath.Join(vm1, "disk")); !errors.Is(err, unix.EKEYREVOKED) {
		t.Errorf("VM 1 after its shred and a remount: %v, want EKEYREVOKED", err)
	}
}

// TestAttackPlaintextInEncryptedVM: whatever the backing-store writer does
// to an encrypted VM (cut or zero a header region, replace an object by an
// empty plain file, plant a plain file under a name the hypervisor creates
// later, remove the policy xattr while mounted or between mounts), no
// write through the mount lands on the backing store in plaintext, and
// fsck reports what was done.
func TestAttackPlaintextInEncryptedVM(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	args := []string{"--dev", "--state-dir", state}
	m := startMount(t, backing, mnt, args...)
	vm := filepath.Join(mnt, "vm")
	bvm := filepath.Join(backing, "vm")
	encryptEmptyVM(t, vm)
	for _, n := range []string{"disk.raw", "nvram", "vm.log"} {
		writeBytes(t, filepath.Join(vm, n), pattern("ORIGINAL-"+n, 20000))
	}
	m.stop() // the attacks below happen at rest; the record stays in state
	// cut the header region of disk.raw and drop its xattr
	raw, _ := os.ReadFile(filepath.Join(bvm, "disk.raw"))
	writeBytes(t, filepath.Join(bvm, "disk.raw"), raw[:100])
	// zero the region of nvram and drop its xattr
	copy(raw, make([]byte, objcrypt.HeaderRegionSize))
	writeBytes(t, filepath.Join(bvm, "nvram"), raw)
	for _, n := range []string{"disk.raw", "nvram"} {
		if err := xattr.Remove(filepath.Join(bvm, n), headerAttr); err != nil {
			t.Fatal(err)
		}
	}
	// replace vm.log by an empty plain file; plant a save file
	os.Remove(filepath.Join(bvm, "vm.log"))
	writeBytes(t, filepath.Join(bvm, "vm.log"), nil)
	writeBytes(t, filepath.Join(bvm, "vm.save"), nil)
	// remove the VM directory's policy
	if err := xattr.Remove(bvm, policyAttr); err != nil {
		t.Fatal(err)
	}

	m = startMount(t, backing, mnt, args...)
	secret := []byte("GUEST-PLAINTEXT-MUST-NOT-LEAK")
	for _, n := range []string{"disk.raw", "nvram", "vm.log", "vm.save"} {
		for _, flags := range []int{os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_WRONLY | os.O_CREATE | os.O_TRUNC} {
			f, err := os.OpenFile(filepath.Join(vm, n), flags, 0o644)
			if err == nil {
				f.Write(secret)
				f.Close()
				t.Errorf("%s opened (flags %#x) in an encrypted VM whose object was tampered with", n, flags)
			} else if !errors.Is(err, unix.EIO) {
				t.Errorf("%s flags %#x: %v, want EIO", n, flags, err)
			}
		}
	}
	// New objects (a snapshot delta, in the VM and a new subdirectory) are
	// still encrypted although the policy is gone.
	if err := os.Mkdir(filepath.Join(vm, "snap"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"new-delta.qcow2", "snap/delta"} {
		writeBytes(t, filepath.Join(vm, n), secret)
		if _, err := xattr.Get(filepath.Join(bvm, n), headerAttr); err != nil {
			t.Errorf("%s was created without a header after the policy was removed", n)
		}
	}
	// And while mounted: remove the policy of the subdirectory too.
	if err := xattr.Remove(filepath.Join(bvm, "snap"), policyAttr); err != nil {
		t.Fatal(err)
	}
	writeBytes(t, filepath.Join(vm, "snap/delta2"), secret)
	m.stop()
	searchBacking(t, backing, secret)
	log := m.stderr.String()
	for _, want := range []string{"plain object inside an encrypted VM", "policy xattr of a directory of an encrypted VM is gone"} {
		if !strings.Contains(log, want) {
			t.Errorf("no log line %q:\n%s", want, log)
		}
	}
	out, _, code := cli(t, "fsck", "--no-keys", "--state-dir", state, backing)
	if code != 5 {
		t.Errorf("fsck exit %d, want 5 (corrupt)\n%s", code, out)
	}
	for _, want := range []string{"plain-in-vm", "policy-vanished"} {
		if !strings.Contains(out, want) {
			t.Errorf("fsck does not report %s:\n%s", want, out)
		}
	}
}

// TestAttackObjectMovedBetweenVMs: one VM's object copied into another VM
// or into a plain directory is not decrypted there; a move through the
// mount across VMs is a copy (EXDEV) that re-encrypts under the target VM.
func TestAttackObjectMovedBetweenVMs(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	vm1, vm2 := filepath.Join(mnt, "vm1"), filepath.Join(mnt, "vm2")
	encryptEmptyVM(t, vm1)
	encryptEmptyVM(t, vm2)
	if err := os.Mkdir(filepath.Join(mnt, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeBytes(t, filepath.Join(vm2, "disk"), []byte("VM2 SECRET"))
	copyWithXattrs(t, filepath.Join(backing, "vm2/disk"), filepath.Join(backing, "vm1/stolen"))
	copyWithXattrs(t, filepath.Join(backing, "vm2/disk"), filepath.Join(backing, "plain/stolen"))
	for _, p := range []string{"vm1/stolen", "plain/stolen"} {
		if b, err := os.ReadFile(filepath.Join(mnt, p)); !errors.Is(err, unix.EIO) {
			t.Errorf("%s: %q, %v; want EIO", p, b, err)
		}
	}
	// coreutils mv across VMs: the kernel's EXDEV makes it copy.
	writeBytes(t, filepath.Join(vm1, "moving"), []byte("MOVES FROM VM1 TO VM2"))
	run(t, "mv", filepath.Join(vm1, "moving"), filepath.Join(vm2, "moving"))
	if b, err := os.ReadFile(filepath.Join(vm2, "moving")); err != nil || string(b) != "MOVES FROM VM1 TO VM2" {
		t.Fatalf("moved file: %q, %v", b, err)
	}
	if h, p := backingHeaderOf(t, filepath.Join(backing, "vm2/moving")), backingPolicyOf(t, filepath.Join(backing, "vm2")); h.VMID != p.VMID {
		t.Errorf("the moved file is under VM %s, want the target VM %s", h.VMID, p.VMID)
	}
	m.stop()
	if !strings.Contains(m.stderr.String(), "refusing an encrypted object outside its VM") {
		t.Errorf("no log line:\n%s", m.stderr.String())
	}
	out, _, code := cli(t, "fsck", "--no-keys", "--state-dir", state, backing)
	if code != 5 || !strings.Contains(out, "foreign-object  vm1/stolen") || !strings.Contains(out, "policy-missing  plain ") {
		t.Errorf("fsck exit %d, want 5 with foreign-object for vm1/stolen and policy-missing for plain:\n%s", code, out)
	}
}

// TestFuseDebugHidesPayloads: --fuse-debug traces requests without the
// payload bytes (file data, xattr values) of encrypted VMs.
func TestFuseDebugHidesPayloads(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state, "--fuse-debug")
	vm := filepath.Join(mnt, "vm")
	encryptEmptyVM(t, vm)
	data := []byte("DEBUGSECRET-in-the-file")
	writeBytes(t, filepath.Join(vm, "f"), data)
	if err := xattr.Set(filepath.Join(vm, "f"), "user.note", []byte("XATTRSECRET-value")); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(vm, "f"), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _ := f.Read(buf)
	f.Close()
	if !bytes.Equal(buf[:n], data) {
		t.Fatalf("read back %q", buf[:n])
	}
	if v, err := xattr.Get(filepath.Join(vm, "f"), "user.note"); err != nil || string(v) != "XATTRSECRET-value" {
		t.Fatalf("xattr back: %q, %v", v, err)
	}
	m.stop()
	log := m.stderr.String()
	if !strings.Contains(log, "WRITE") {
		t.Fatalf("no request trace in the log (is --fuse-debug on?):\n%.2000s", log)
	}
	for _, secret := range []string{"DEBUGSEC", "XATTRSEC"} {
		if strings.Contains(log, secret) {
			t.Errorf("payload bytes %q in the --fuse-debug trace", secret)
		}
	}
}
