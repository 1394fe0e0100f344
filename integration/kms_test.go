//go:build integration

package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// pykmip is the PyKMIP server started by integration/run.sh (or by the
// developer with integration/pykmip.sh start DIR); CRYPTDS_PYKMIP_DIR names
// its directory.
type pykmip struct{ dir, endpoint string }

func needPyKMIP(t *testing.T) *pykmip {
	t.Helper()
	dir := os.Getenv("CRYPTDS_PYKMIP_DIR")
	require(t, dir != "", "a PyKMIP server (CRYPTDS_PYKMIP_DIR, started by integration/run.sh)")
	ep, err := os.ReadFile(filepath.Join(dir, "endpoint"))
	if err != nil {
		t.Fatalf("PyKMIP dir %s: %v", dir, err)
	}
	return &pykmip{dir: dir, endpoint: strings.TrimSpace(string(ep))}
}

// flags are the mount flags that point cryptds at this server.
func (p *pykmip) flags() []string {
	return []string{"--kmip", p.endpoint, "--kmip-ca", filepath.Join(p.dir, "ca.crt"),
		"--kmip-cert", filepath.Join(p.dir, "client.crt"), "--kmip-key", filepath.Join(p.dir, "client.key")}
}

func (p *pykmip) stop(t *testing.T) {
	t.Helper()
	run(t, "../integration/pykmip.sh", "stop", p.dir)
}

func (p *pykmip) start(t *testing.T) {
	t.Helper()
	port := p.endpoint[strings.LastIndex(p.endpoint, ":")+1:]
	run(t, "../integration/pykmip.sh", "start", p.dir, port)
}

// TestPyKMIPMount runs the product against the real KMS: a VM encrypted
// with a KEK created in PyKMIP, plaintext never on the backing store, data
// back after a remount; then the KMS dies: cached keys keep the VM running,
// a new VM cannot get a key and says so, and after the KMS returns
// everything works again without a restart.
func TestPyKMIPMount(t *testing.T) {
	requireRoot(t)
	kms := needPyKMIP(t)
	backing, mnt, state := dirs(t)
	args := append(kms.flags(), "--state-dir", state)
	m := startMount(t, backing, mnt, args...)
	vm := filepath.Join(mnt, "vm-pykmip")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := pattern("PYKMIP-SECRET-DISK-", 5<<20+77)
	if err := os.WriteFile(filepath.Join(vm, "disk.raw"), disk, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "vm", "encrypt", vm).CombinedOutput()
	if err != nil {
		t.Fatalf("vm encrypt: %v\n%s", err, out)
	}
	pol := make([]byte, 512)
	n, err := unix.Getxattr(vm, "user.cryptds.policy", pol)
	if err != nil || !strings.HasPrefix(string(pol[:n]), "encrypted") {
		t.Fatalf("policy after vm encrypt: %q, %v", pol[:n], err)
	}
	searchBacking(t, backing, []byte("PYKMIP-SECRET"))
	m.stop()

	m = startMount(t, backing, mnt, args...)
	got, err := os.ReadFile(filepath.Join(vm, "disk.raw"))
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("after remount: %d bytes, %v", len(got), err)
	}

	kms.stop(t)
	restarted := false
	defer func() {
		if !restarted {
			kms.start(t)
		}
	}()
	// The key is cached: the running VM keeps reading and writing.
	if err := os.WriteFile(filepath.Join(vm, "nvram"), []byte("PYKMIP-SECRET-NVRAM"), 0o600); err != nil {
		t.Fatalf("write with KMS down and key cached: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(vm, "disk.raw")); err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("read with KMS down and key cached: %v", err)
	}
	// A new VM needs a new KEK: that must fail, clearly.
	vm2 := filepath.Join(mnt, "vm-new")
	if err := os.Mkdir(vm2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(vm2, "user.cryptds.policy", []byte("encrypted"), 0); !errors.Is(err, unix.ENOKEY) {
		t.Fatalf("encrypting a new VM with the KMS down: %v, want ENOKEY", err)
	}
	if !strings.Contains(m.stderr.String(), kms.endpoint) {
		t.Errorf("daemon log does not name the KMS endpoint %s:\n%s", kms.endpoint, m.stderr.String())
	}
	kms.start(t)
	restarted = true
	if err := unix.Setxattr(vm2, "user.cryptds.policy", []byte("encrypted"), 0); err != nil {
		t.Fatalf("encrypting a new VM after the KMS returned: %v", err)
	}
	if err := os.WriteFile(filepath.Join(vm2, "x.conf"), []byte("PYKMIP-SECRET-CONF"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.stop()
	searchBacking(t, backing, []byte("PYKMIP-SECRET"))
}
