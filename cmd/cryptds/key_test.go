package main

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/devkms"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/objcrypt"
)

// testPolicy is a policy under kek (the DEK is random and unused).
func testPolicy(t *testing.T, kek string) *objcrypt.Policy {
	t.Helper()
	vm, err := objcrypt.NewVMID(nil)
	if err != nil {
		t.Fatal(err)
	}
	wk := make([]byte, objcrypt.KeySize)
	dek, _ := objcrypt.NewDEK(nil)
	w, err := objcrypt.WrapDEK(wk, dek, kek, vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: vm, KEKID: kek, WrappedDEK: w, Created: time.Now().UTC()}
}

// header returns the xattr and in-file region of a new object under pol.
func header(t *testing.T, pol *objcrypt.Policy) (xb, region []byte) {
	t.Helper()
	id, err := objcrypt.NewObjectID(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := pol.NewHeader(id)
	if xb, err = h.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	if region, err = h.MarshalRegion(); err != nil {
		t.Fatal(err)
	}
	return xb, region
}

// mkVM makes an encrypted VM directory under ds with n objects under kek;
// lost names objects whose header xattr is dropped (an rsync without -X).
func mkVM(t *testing.T, ds, name, kek string, n int, lost bool) {
	t.Helper()
	dir := filepath.Join(ds, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pol := testPolicy(t, kek)
	raw, err := pol.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := xattr.Set(dir, "user.cryptds.policy", raw); err != nil {
		t.Skipf("no user xattrs: %v", err)
	}
	for i := range n {
		xb, region := header(t, pol)
		p := filepath.Join(dir, "obj"+string(rune('0'+i)))
		if err := os.WriteFile(p, append(region, make([]byte, 100)...), 0o600); err != nil {
			t.Fatal(err)
		}
		if !lost {
			if err := xattr.Set(p, headerAttr, xb); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestScanRefs(t *testing.T) {
	ds := t.TempDir()
	mkVM(t, ds, "web01", "kek-new", 2, false)
	mkVM(t, ds, "db01", "kek-db", 1, true) // headers only in the files
	if err := os.WriteFile(filepath.Join(ds, "web01", "plain.conf"), []byte("not encrypted"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A backup taken before web01 was rekeyed: a tar with xattrs, and a
	// directory copy whose xattrs were lost.
	old := testPolicy(t, "kek-old")
	xb, region := header(t, old)
	polRaw, _ := old.MarshalBinary()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "web01/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{paxXattr + "user.cryptds.policy": string(polRaw)}})
	body := append(region, make([]byte, 64)...)
	tw.WriteHeader(&tar.Header{Name: "web01/disk.raw", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(body)), PAXRecords: map[string]string{paxXattr + headerAttr: string(xb)}})
	tw.Write(body)
	_, region2 := header(t, old)
	tw.WriteHeader(&tar.Header{Name: "web01/nvram", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(region2))})
	tw.Write(region2)
	tw.Close()
	tarPath := filepath.Join(t.TempDir(), "web01-cipher.tar")
	if err := os.WriteFile(tarPath, tb.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	bdir := t.TempDir()
	mkVM(t, bdir, "web01", "kek-old", 1, true)

	ix, err := scanRefs(ds, []string{tarPath, bdir})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][3]int{"kek-new": {1, 2, 0}, "kek-db": {1, 1, 0}, "kek-old": {0, 0, 5}}
	if len(ix) != len(want) {
		t.Errorf("found keys %v, want %v", ix.sorted(), want)
	}
	for id, w := range want {
		r := ix[id]
		if r == nil || [3]int{r.Policies, r.Objects, r.Backup} != w {
			t.Errorf("%s: %+v, want policies, objects, backup = %v", id, r, w)
		}
	}
}

// TestKeyDestroy: key destroy refuses a KEK that the datastore or a
// backup given still references (exit 3, naming a path), destroys an
// unreferenced one at the KMS, and --force overrides the refusal.
func TestKeyDestroy(t *testing.T) {
	state := t.TempDir()
	srv, err := devkms.New(devkms.Config{StateDir: filepath.Join(state, "devkms"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key := srv.ClientCredentials()
	cl, err := kmipclient.New(context.Background(), kmipclient.Config{Endpoints: []string{srv.Addr()}, CAFile: ca, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range []string{"used", "backup", "unused"} {
		id, err := cl.CreateKEK(context.Background(), "test/"+n)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cl.Close()
	srv.Close()
	used, inBackup, unused := ids[0], ids[1], ids[2]
	ds, backup := t.TempDir(), t.TempDir()
	mkVM(t, ds, "web01", used, 1, false)
	mkVM(t, backup, "web01", inBackup, 1, false)
	kms := []string{"--dev", "--state-dir", state}

	for _, c := range []struct{ id, path string }{{used, filepath.Join(ds, "web01")}, {inBackup, filepath.Join(backup, "web01")}} {
		code, _, stderr := runCLI(t, append(append([]string{"key", "destroy"}, kms...), "--backup", backup, ds, c.id)...)
		if code != ExitMount || !strings.Contains(stderr, c.path) || !strings.Contains(stderr, "--force") {
			t.Errorf("destroy of referenced %s: exit %d, want %d naming %s and --force: %s", c.id, code, ExitMount, c.path, stderr)
		}
	}
	if code, out, stderr := runCLI(t, append(append([]string{"key", "destroy"}, kms...), "--backup", backup, ds, unused)...); code != 0 || !strings.Contains(out, unused) {
		t.Fatalf("destroy of an unreferenced key: exit %d: %s%s", code, out, stderr)
	}
	if code, _, stderr := runCLI(t, append(append([]string{"key", "destroy", "--force"}, kms...), ds, used)...); code != 0 {
		t.Fatalf("destroy --force: exit %d: %s", code, stderr)
	}
	code, out, stderr := runCLI(t, append(append([]string{"key", "list", "--json"}, kms...), "--backup", backup, ds)...)
	if code != 0 {
		t.Fatalf("key list: exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, `"state": "Destroyed"`) && !strings.Contains(out, `"state": "not-found"`) {
		t.Errorf("key list does not show the destroyed key as Destroyed or not-found:\n%s", out)
	}
	for _, w := range []string{`"kek_id": "` + used + `"`, `"use": "in use"`, `"kek_id": "` + inBackup + `"`, `"state": "Active"`, `"use": "backups only"`} {
		if !strings.Contains(out, w) {
			t.Errorf("key list lacks %s:\n%s", w, out)
		}
	}
}
