//go:build integration

package integration

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// vmRow is the part of `vm list --json` the key tests check.
type vmRow struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	KEKID    string `json:"kek_id"`
	KeyState string `json:"key_state"`
	KMS      string `json:"kms"`
}

func listVMs(t *testing.T, mnt string) map[string]vmRow {
	t.Helper()
	var rows []vmRow
	if err := json.Unmarshal([]byte(mustCLI(t, "vm", "list", "--json", mnt)), &rows); err != nil {
		t.Fatal(err)
	}
	out := map[string]vmRow{}
	for _, r := range rows {
		out[r.Name] = r
	}
	return out
}

// devEndpoint is the address of the in-process dev KMS a mount started
// (a new port on every mount), from its log.
func devEndpoint(t *testing.T, m *mountProc) string {
	t.Helper()
	re := regexp.MustCompile(`msg="KMS reachable" kms=(\S+)`)
	var sub []string
	if !waitFor(10*time.Second, func() bool { sub = re.FindStringSubmatch(m.stderr.String()); return sub != nil }) {
		t.Fatalf("no 'KMS reachable' line in the mount log:\n%s", m.stderr.String())
	}
	return sub[1]
}

// mkPlainVM makes a VM directory with one plain file through the mount.
func mkPlainVM(t *testing.T, mnt, name, content string) string {
	t.Helper()
	vm := filepath.Join(mnt, name)
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vm, "disk.raw"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return vm
}

// TestVMListKeyState: vm list shows the key's state at the KMS and the
// endpoint serving it now (after a remount, the dev KMS's new port, not
// the one the policy recorded), and a shredded VM as shredded, also after
// a remount.
func TestVMListKeyState(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	args := []string{"--dev", "--state-dir", state}
	m := startMount(t, backing, mnt, args...)
	first := devEndpoint(t, m)
	vm := mkPlainVM(t, mnt, "web01", "KEYSTATE-DATA")
	mustCLI(t, "vm", "encrypt", vm)
	if r := listVMs(t, mnt)["web01"]; r.State != "encrypted" || r.KeyState != "active" || r.KMS != first {
		t.Errorf("after vm encrypt: %+v, want encrypted, key active at %s", r, first)
	}
	m.stop()
	m = startMount(t, backing, mnt, args...)
	now := devEndpoint(t, m)
	if now == first {
		t.Skipf("the dev KMS got the same port again (%s): nothing to tell apart", now)
	}
	if r := listVMs(t, mnt)["web01"]; r.KeyState != "active" || r.KMS != now {
		t.Errorf("after a remount: %+v, want key active at the KMS serving it now, %s (not %s)", r, now, first)
	}
	out := mustCLI(t, "vm", "status", vm)
	if !strings.Contains(out, "key:      active") || !strings.Contains(out, now) {
		t.Errorf("vm status does not show the key state and %s:\n%s", now, out)
	}
	mustCLI(t, "vm", "shred", "--yes", vm)
	if r := listVMs(t, mnt)["web01"]; r.State != "shredded" || r.KeyState != "shredded" {
		t.Errorf("after vm shred: %+v, want state and key shredded", r)
	}
	m.stop()
	startMount(t, backing, mnt, args...)
	if r := listVMs(t, mnt)["web01"]; r.State != "shredded" || r.KeyState != "shredded" {
		t.Errorf("shredded VM after a remount: %+v, want state and key shredded", r)
	}
}

// TestKMSDownExitCodes: with the KMS refusing connections, every command
// that needs it exits 4 and names the endpoint; setfattr of a policy gets
// ENOKEY; vm list says the key is unreachable.
func TestKMSDownExitCodes(t *testing.T) {
	requireRoot(t)
	kms := needPyKMIP(t)
	backing, mnt, state := dirs(t)
	args := append(kms.flags(), "--state-dir", state)
	startMount(t, backing, mnt, args...)
	vm1 := mkPlainVM(t, mnt, "vm1", "KMSDOWN-1")
	mustCLI(t, "vm", "encrypt", vm1)
	vm2 := mkPlainVM(t, mnt, "vm2", "KMSDOWN-2")

	kms.stop(t)
	defer kms.start(t)
	if r := listVMs(t, mnt)["vm1"]; r.KeyState != "unreachable" || !strings.Contains(r.KMS, kms.endpoint) {
		t.Errorf("vm list with the KMS down: %+v, want key unreachable at %s", r, kms.endpoint)
	}
	// vm shred last: it forgets the key on this host before asking the KMS.
	for _, cmd := range [][]string{
		{"vm", "encrypt", vm2},
		{"vm", "rekey", vm1},
		{"vm", "rekey", "--deep", vm1},
		append(append([]string{"mount"}, args...), t.TempDir(), t.TempDir()),
		append(append([]string{"fsck", "--state-dir", t.TempDir()}, kms.flags()...), t.TempDir()),
		append(append([]string{"key", "list"}, kms.flags()...), backing),
		append(append([]string{"key", "destroy"}, kms.flags()...), backing, "no-such-kek"),
		{"vm", "shred", "--yes", vm1},
	} {
		_, stderr, code := cli(t, cmd...)
		if code != 4 || !strings.Contains(stderr, kms.endpoint) {
			t.Errorf("cryptds %s with the KMS down: exit %d, want 4 naming %s:\n%s", strings.Join(cmd[:2], " "), code, kms.endpoint, stderr)
		}
	}
	vm3 := filepath.Join(mnt, "vm3")
	if err := os.Mkdir(vm3, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(vm3, "user.cryptds.policy", []byte("encrypted"), 0); !errors.Is(err, unix.ENOKEY) {
		t.Errorf("setfattr user.cryptds.policy with the KMS down: %v, want ENOKEY", err)
	}
}

// TestKeyTTLZero: with --key-ttl 0 nothing is served without the KMS: a
// file already open keeps working, but once closed it cannot be opened
// again until the KMS is back.
func TestKeyTTLZero(t *testing.T) {
	requireRoot(t)
	kms := needPyKMIP(t)
	backing, mnt, state := dirs(t)
	startMount(t, backing, mnt, append(kms.flags(), "--state-dir", state, "--key-ttl", "0")...)
	vm := filepath.Join(mnt, "vm")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	p := filepath.Join(vm, "disk.raw")
	if err := os.WriteFile(p, []byte("TTL0-DATA"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	kms.stop(t)
	restarted := false
	defer func() {
		if !restarted {
			kms.start(t)
		}
	}()
	buf := make([]byte, 9)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "TTL0-DATA" {
		t.Errorf("read of a file open before the KMS went down: %q, %v", buf, err)
	}
	f.Close()
	dropCaches(t)
	if _, err := os.ReadFile(p); !errors.Is(err, unix.ENOKEY) {
		t.Errorf("open after the last close with the KMS down and --key-ttl 0: %v, want ENOKEY", err)
	}
	kms.start(t)
	restarted = true
	if b, err := os.ReadFile(p); err != nil || string(b) != "TTL0-DATA" {
		t.Errorf("after the KMS returned: %q, %v", b, err)
	}
}

// dropCaches makes the kernel forget cached pages, so a read goes to the
// daemon.
func dropCaches(t *testing.T) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		t.Fatal(err)
	}
}

// TestKeyListDestroyAndRestore follows README "Backups and restores": a
// rekey names the old KEK and says backups need it; key list shows it as
// needed by the ciphertext backup only; key destroy refuses while that
// backup is given, then destroys it; the ciphertext backup then reads
// EKEYREVOKED, while the plaintext backup restores encrypted into a
// directory given a policy first.
func TestKeyListDestroyAndRestore(t *testing.T) {
	requireRoot(t)
	require(t, haveCmd("tar"), "tar")
	kms := needPyKMIP(t)
	backing, mnt, state := dirs(t)
	args := append(kms.flags(), "--state-dir", state)
	m := startMount(t, backing, mnt, args...)
	const secret = "RESTORE-PLAINTEXT-SECRET"
	vm := mkPlainVM(t, mnt, "web01", secret)
	mustCLI(t, "vm", "encrypt", vm)
	bk := t.TempDir()
	plainTar, cipherTar := filepath.Join(bk, "web01.tar"), filepath.Join(bk, "web01-cipher.tar")
	run(t, "tar", "-C", mnt, "-cf", plainTar, "web01")
	run(t, "tar", "--xattrs", "--xattrs-include=user.*", "-C", backing, "-cf", cipherTar, "web01")

	out := mustCLI(t, "vm", "rekey", vm)
	sub := regexp.MustCompile(`old kek \(no longer used by this VM\): (\S+)`).FindStringSubmatch(out)
	if sub == nil || !strings.Contains(out, "ciphertext backup") || strings.Contains(out, "may be destroyed") {
		t.Fatalf("vm rekey output does not name the old KEK and the backups that need it:\n%s", out)
	}
	oldKEK := sub[1]

	keys := func() map[string]map[string]any {
		t.Helper()
		var rows []map[string]any
		if err := json.Unmarshal([]byte(mustCLI(t, append(append([]string{"key", "list", "--json"}, kms.flags()...), "--backup", cipherTar, backing)...)), &rows); err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]any{}
		for _, r := range rows {
			out[r["kek_id"].(string)] = r
		}
		return out
	}
	rows := keys()
	if r := rows[oldKEK]; r == nil || r["use"] != "backups only" || r["state"] != "Active" || r["endpoint"] != kms.endpoint {
		t.Errorf("key list: old KEK %s = %v, want Active at %s, backups only", oldKEK, r, kms.endpoint)
	}
	if len(rows) != 2 {
		t.Errorf("key list shows %d keys, want the new and the old one: %v", len(rows), rows)
	}
	// The mountpoint names the same datastore (its backing directory is read).
	viaMount := mustCLI(t, append(append([]string{"key", "list"}, kms.flags()...), mnt)...)
	for k := range rows {
		if k != oldKEK && !strings.Contains(viaMount, k) {
			t.Errorf("key list MOUNTPOINT does not show the VM's KEK %s:\n%s", k, viaMount)
		}
	}
	destroy := append(append([]string{"key", "destroy"}, kms.flags()...), "--backup", cipherTar, backing, oldKEK)
	if _, stderr, code := cli(t, destroy...); code != 3 || !strings.Contains(stderr, cipherTar) {
		t.Errorf("key destroy of a KEK the backup given needs: exit %d, want 3 naming %s: %s", code, cipherTar, stderr)
	}
	for k, r := range rows {
		if k != oldKEK {
			d := append(append([]string{"key", "destroy"}, kms.flags()...), backing, k)
			if _, stderr, code := cli(t, d...); code != 3 || !strings.Contains(stderr, "web01") {
				t.Errorf("key destroy of the KEK in use (%v): exit %d, want 3: %s", r, code, stderr)
			}
		}
	}
	mustCLI(t, append(append([]string{"key", "destroy"}, kms.flags()...), backing, oldKEK)...)
	if st := keys()[oldKEK]["state"]; st == "Active" {
		t.Errorf("old KEK still Active after key destroy")
	}

	// The ciphertext backup from before the rekey is now unreadable.
	ds2, mnt2, state2 := dirs(t)
	run(t, "tar", "--xattrs", "--xattrs-include=user.*", "-C", ds2, "-xf", cipherTar)
	m2 := startMount(t, ds2, mnt2, append(kms.flags(), "--state-dir", state2)...)
	if _, err := os.ReadFile(filepath.Join(mnt2, "web01", "disk.raw")); !errors.Is(err, unix.EKEYREVOKED) {
		t.Errorf("ciphertext backup under the destroyed old KEK: %v, want EKEYREVOKED", err)
	}
	m2.stop()

	// Plaintext restore, as README shows it: policy first, then extract.
	if err := os.RemoveAll(vm); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "setfattr", "-n", "user.cryptds.policy", "-v", "encrypted", vm)
	run(t, "tar", "-C", mnt, "-xf", plainTar, "web01")
	if b, err := os.ReadFile(filepath.Join(vm, "disk.raw")); err != nil || string(b) != secret {
		t.Errorf("restored file: %q, %v", b, err)
	}
	if s := vmStatus(t, vm); s.State != "encrypted" || s.Plain != 0 {
		t.Errorf("restored VM: state %s, %d plain objects; want encrypted, none plain", s.State, s.Plain)
	}
	searchBacking(t, filepath.Join(backing, "web01"), []byte(secret))
	m.stop()
}
