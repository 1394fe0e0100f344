//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/devkms"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/objcrypt"
)

// kmsUnderTest is one KMS the lifecycle runs against.
type kmsUnderTest struct {
	flags func(state string) []string
	// client connects the test itself to the KMS (to destroy a key by
	// hand); for the dev KMS only while no mount runs.
	client func(t *testing.T, state string) (*kmipclient.Client, func())
	py     *pykmip
}

func devKMS() kmsUnderTest {
	return kmsUnderTest{
		flags: func(state string) []string { return []string{"--dev", "--state-dir", state} },
		client: func(t *testing.T, state string) (*kmipclient.Client, func()) {
			srv, err := devkms.New(devkms.Config{StateDir: filepath.Join(state, "devkms"), Listen: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			ca, cert, key := srv.ClientCredentials()
			cl, err := kmipclient.New(context.Background(), kmipclient.Config{Endpoints: []string{srv.Addr()}, CAFile: ca, CertFile: cert, KeyFile: key})
			if err != nil {
				srv.Close()
				t.Fatal(err)
			}
			return cl, func() { cl.Close(); srv.Close() }
		},
	}
}

func pyKMS(p *pykmip) kmsUnderTest {
	return kmsUnderTest{
		py:    p,
		flags: func(state string) []string { return append(p.flags(), "--state-dir", state) },
		client: func(t *testing.T, state string) (*kmipclient.Client, func()) {
			cl, err := kmipclient.New(context.Background(), kmipclient.Config{Endpoints: []string{p.endpoint},
				CAFile: filepath.Join(p.dir, "ca.crt"), CertFile: filepath.Join(p.dir, "client.crt"), KeyFile: filepath.Join(p.dir, "client.key")})
			if err != nil {
				t.Fatal(err)
			}
			return cl, func() { cl.Close() }
		},
	}
}

// backingState is, per object of a VM, its header and a hash of everything
// after the header region.
type backingState map[string]struct {
	hdr  *objcrypt.Header
	body [32]byte
	size int
}

func readBacking(t *testing.T, dir string) backingState {
	t.Helper()
	out := backingState{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		raw := make([]byte, 1024)
		n, err := syscall.Getxattr(p, "user.cryptds.hdr", raw)
		if err != nil {
			t.Fatalf("%s has no header: %v", p, err)
		}
		h, err := objcrypt.ParseHeader(raw[:n])
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		e := out[rel]
		e.hdr, e.size = h, len(b)
		if len(b) > 0 {
			rh, err := objcrypt.ParseRegion(b[:objcrypt.HeaderRegionSize])
			if err != nil || !rh.Equal(h) {
				t.Errorf("%s: header copies disagree (%v)", rel, err)
			}
			e.body = sha256.Sum256(b[objcrypt.HeaderRegionSize:])
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := cli(t, args...)
	if code != 0 {
		t.Fatalf("cryptds %v: exit %d\n%s%s", args, code, out, stderr)
	}
	return out
}

func TestLifecycleDev(t *testing.T) {
	requireRoot(t)
	lifecycle(t, devKMS())
}

func TestLifecyclePyKMIP(t *testing.T) {
	requireRoot(t)
	lifecycle(t, pyKMS(needPyKMIP(t)))
}

// lifecycle: encrypt, shallow rekey (headers only), destroy the old KEK,
// remount, deep rekey with a crash, fsck, KMS down, shred.
func lifecycle(t *testing.T, kms kmsUnderTest) {
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, kms.flags(state)...)
	vm := makeVM(t, mnt, "vm1", "CRYPTDS-LIFE", 256<<20, 8)
	mustCLI(t, "vm", "encrypt", vm)
	plain := treeSums(t, vm)
	before := readBacking(t, filepath.Join(backing, "vm1"))
	oldKEK := vmStatus(t, vm).KEKID

	// Shallow rekey: new KEK in every header, data bytes untouched.
	out := mustCLI(t, "vm", "rekey", vm)
	if !strings.Contains(out, "old kek") || !strings.Contains(out, oldKEK) {
		t.Errorf("rekey output does not name the old KEK:\n%s", out)
	}
	newKEK := vmStatus(t, vm).KEKID
	if newKEK == oldKEK || newKEK == "" {
		t.Fatalf("KEK after rekey %q (was %q)", newKEK, oldKEK)
	}
	after := readBacking(t, filepath.Join(backing, "vm1"))
	for rel, b := range before {
		a := after[rel]
		if a.hdr.KEKID != newKEK || a.hdr.ObjectID != b.hdr.ObjectID || a.body != b.body || a.size != b.size {
			t.Errorf("%s: after shallow rekey kek %s (want %s), body same %v, size %d->%d", rel, a.hdr.KEKID, newKEK, a.body == b.body, b.size, a.size)
		}
	}
	sameSums(t, "plaintext after shallow rekey", treeSums(t, vm), plain)

	// The old KEK can be revoked and destroyed; the VM reads after a remount.
	m.stop()
	cl, closeKMS := kms.client(t, state)
	ctx := context.Background()
	if err := cl.Revoke(ctx, oldKEK); err != nil {
		t.Fatalf("revoke old KEK: %v", err)
	}
	if err := cl.Destroy(ctx, oldKEK); err != nil {
		t.Fatalf("destroy old KEK: %v", err)
	}
	closeKMS()
	out, stderr, code := cli(t, append(append([]string{"fsck"}, kms.flags(state)...), backing)...)
	if code != 0 || !strings.Contains(out, "clean") {
		t.Errorf("fsck after shallow rekey: exit %d\n%s%s", code, out, stderr)
	}
	m = startMount(t, backing, mnt, kms.flags(state)...)
	sameSums(t, "plaintext after destroying the old KEK and remounting", treeSums(t, vm), plain)

	// KMS down: rekey fails clearly (exit 4) and changes nothing.
	if kms.py != nil {
		kms.py.stop(t)
		out, stderr, code := cli(t, "vm", "rekey", vm)
		kms.py.start(t)
		if code != 4 || !strings.Contains(stderr, "key server") {
			t.Errorf("rekey with the KMS down: exit %d\n%s%s", code, out, stderr)
		}
		if now := readBacking(t, filepath.Join(backing, "vm1")); !sameBacking(now, after) {
			t.Error("a failed rekey changed the backing store")
		}
	}

	// Deep rekey, killed once early, then re-run to the end.
	cmd := exec.Command(binary, "vm", "rekey", "--deep", vm)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it as soon as the new policy is stored, mid-conversion.
	polBefore := backingPolicyBytes(filepath.Join(backing, "vm1"))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if !bytes.Equal(backingPolicyBytes(filepath.Join(backing, "vm1")), polBefore) {
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	sameSums(t, "plaintext after a killed deep rekey", dropLeftovers(treeSums(t, vm)), plain)
	out = mustCLI(t, "vm", "rekey", "--deep", vm)
	if !strings.Contains(out, "finished the interrupted deep rekey") {
		t.Logf("the kill did not interrupt the deep rekey: %s", out)
	}
	st := vmStatus(t, vm)
	if st.KEKID == newKEK || st.State != "encrypted" {
		t.Fatalf("after deep rekey: kek %s state %s", st.KEKID, st.State)
	}
	deep := readBacking(t, filepath.Join(backing, "vm1"))
	for rel, a := range after {
		d := deep[rel]
		if d.hdr == nil || d.hdr.KEKID != st.KEKID || (a.size > objcrypt.HeaderRegionSize && d.body == a.body) {
			t.Errorf("%s: not re-encrypted by the deep rekey", rel)
		}
	}
	if l, _ := filepath.Glob(filepath.Join(backing, "vm1", ".cryptds-convert-*")); len(l) > 0 {
		t.Errorf("leftovers: %v", l)
	}
	sameSums(t, "plaintext after deep rekey", treeSums(t, vm), plain)

	// Shred: refused without --yes; then every read fails, forever.
	if _, _, code := cli(t, "vm", "shred", vm); code != 2 {
		t.Errorf("shred without --yes: exit %d", code)
	}
	out = mustCLI(t, "vm", "shred", "--yes", vm)
	if !strings.Contains(out, st.KEKID) {
		t.Errorf("shred output does not name the destroyed KEK:\n%s", out)
	}
	for rel := range plain {
		if _, err := os.ReadFile(filepath.Join(vm, rel)); !errors.Is(err, syscall.EKEYREVOKED) && !errors.Is(err, syscall.EIO) {
			t.Errorf("%s readable after shred: %v", rel, err)
		}
	}
	m.stop()
	m = startMount(t, backing, mnt, kms.flags(state)...)
	for rel := range plain {
		if _, err := os.ReadFile(filepath.Join(vm, rel)); !errors.Is(err, syscall.EKEYREVOKED) {
			t.Errorf("%s after shred and remount: %v, want EKEYREVOKED", rel, err)
		}
	}
	if !strings.Contains(m.stderr.String(), st.KEKID) {
		t.Error("the mount's log does not name the destroyed key")
	}
	m.stop()
	out, _, code = cli(t, append(append([]string{"fsck", "--json"}, kms.flags(state)...), backing)...)
	if code != 0 || !strings.Contains(out, `"key-gone"`) {
		t.Errorf("fsck of a shredded VM: exit %d\n%s", code, out)
	}
}

func sameBacking(a, b backingState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y := b[k]
		if y.hdr == nil || !x.hdr.Equal(y.hdr) || x.body != y.body || x.size != y.size {
			return false
		}
	}
	return true
}

func backingPolicyBytes(dir string) []byte {
	b := make([]byte, 4096)
	n, err := syscall.Getxattr(dir, "user.cryptds.policy", b)
	if err != nil {
		return nil
	}
	return b[:n]
}

// dropLeftovers removes conversion copies from a treeSums result.
func dropLeftovers(m map[string][32]byte) map[string][32]byte {
	for n := range m {
		if strings.HasPrefix(filepath.Base(n), ".cryptds-convert-") {
			delete(m, n)
		}
	}
	return m
}
