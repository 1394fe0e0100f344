package fsck

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/objcrypt"
)

// memKeys is a KMS in a map; gone ids answer ErrKeyGone.
type memKeys struct {
	keys map[string]objcrypt.Key
	gone map[string]bool
	down bool
}

func (k *memKeys) KEK(_ context.Context, id string) (objcrypt.Key, error) {
	switch {
	case k.down:
		return nil, fmt.Errorf("kms down: %w", ErrKeyUnavailable)
	case k.gone[id]:
		return nil, fmt.Errorf("kek %s: %w", id, ErrKeyGone)
	}
	key, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("no key %s: %w", id, ErrKeyGone)
	}
	return bytes.Clone(key), nil
}

// vmFixture is one encrypted VM made with objcrypt directly.
type vmFixture struct {
	pol  *objcrypt.Policy
	dek  objcrypt.Key
	keys *memKeys
}

func newVM(t *testing.T, dir string) *vmFixture {
	t.Helper()
	kek := make(objcrypt.Key, 32)
	rand.Read(kek)
	dek, _ := objcrypt.NewDEK(nil)
	vm, _ := objcrypt.NewVMID(nil)
	w, err := objcrypt.WrapDEK(kek, dek, "kek-1", vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol := &objcrypt.Policy{Version: 1, VMID: vm, KEKID: "kek-1", WrappedDEK: w, Created: time.Now().UTC()}
	raw, _ := pol.MarshalBinary()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := xattr.Set(dir, PolicyAttr, raw); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	return &vmFixture{pol: pol, dek: dek, keys: &memKeys{keys: map[string]objcrypt.Key{"kek-1": kek}, gone: map[string]bool{}}}
}

// object writes an encrypted object with plain as content and returns the
// header bytes.
func (v *vmFixture) object(t *testing.T, path string, plain []byte) []byte {
	t.Helper()
	id, _ := objcrypt.NewObjectID(nil)
	h := v.pol.NewHeader(id)
	xb, _ := h.MarshalBinary()
	region, _ := h.MarshalRegion()
	obj, err := objcrypt.NewObject(v.dek, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := obj.EncryptBlocks(nil, plain, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(region, body...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := xattr.Set(path, HeaderAttr, xb); err != nil {
		t.Fatal(err)
	}
	return xb
}

func kinds(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Kind)
	}
	return out
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name      string
		damage    func(t *testing.T, path string, v *vmFixture)
		opts      Options
		wantKinds []string
		corrupt   bool
	}{
		{"clean", nil, Options{}, nil, false},
		{"flipped block byte", func(t *testing.T, p string, _ *vmFixture) {
			// flip a bit (writing a fixed value is a no-op 1 time in 256)
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			defer f.Close()
			b := make([]byte, 1)
			f.ReadAt(b, objcrypt.HeaderRegionSize+100)
			f.WriteAt([]byte{b[0] ^ 0x80}, objcrypt.HeaderRegionSize+100)
		}, Options{}, []string{KindBlockAuth}, true},
		{"xattr stripped", func(t *testing.T, p string, _ *vmFixture) { xattr.Remove(p, HeaderAttr) }, Options{}, []string{KindXattrMissing}, true},
		{"xattr restored", func(t *testing.T, p string, _ *vmFixture) { xattr.Remove(p, HeaderAttr) }, Options{RestoreXattrs: true}, []string{KindXattrRestored}, false},
		{"copies disagree", func(t *testing.T, p string, v *vmFixture) {
			other := v.pol.NewHeader(objcrypt.ObjectID{1})
			b, _ := other.MarshalBinary()
			xattr.Set(p, HeaderAttr, b)
		}, Options{RestoreXattrs: true}, []string{KindHeaderMismatch}, true},
		{"bad size", func(t *testing.T, p string, _ *vmFixture) {
			os.Truncate(p, objcrypt.HeaderRegionSize+3*objcrypt.CipherBlockSize+20)
		}, Options{}, []string{KindSize}, true},
		{"interrupted truncate", func(t *testing.T, p string, _ *vmFixture) {
			xattr.Set(p, ShrinkAttr, []byte("8292"))
		}, Options{}, []string{KindTruncatePending}, false},
		{"leftover", func(t *testing.T, p string, _ *vmFixture) {
			os.WriteFile(filepath.Join(filepath.Dir(p), ".cryptds-convert-disk"), []byte("x"), 0o600)
		}, Options{TempPrefix: ".cryptds-convert-"}, []string{KindLeftover}, false},
		{"orphan leftover", func(t *testing.T, p string, _ *vmFixture) {
			os.WriteFile(filepath.Join(filepath.Dir(p), ".cryptds-convert-gone"), []byte("x"), 0o600)
		}, Options{TempPrefix: ".cryptds-convert-"}, []string{KindOrphanLeftover}, false},
		{"bad policy", func(t *testing.T, p string, _ *vmFixture) {
			xattr.Set(filepath.Dir(p), PolicyAttr, []byte("{"))
		}, Options{}, []string{KindPolicyCorrupt}, true},
		{"policy lost", func(t *testing.T, p string, _ *vmFixture) {
			xattr.Remove(filepath.Dir(p), PolicyAttr)
		}, Options{}, []string{KindPolicyMissing}, false},
		{"xattrs and policy lost, restored", func(t *testing.T, p string, _ *vmFixture) {
			xattr.Remove(p, HeaderAttr)
			xattr.Remove(filepath.Dir(p), PolicyAttr)
		}, Options{RestoreXattrs: true}, []string{KindPolicyRestored, KindXattrRestored}, false},
		{"policy lost, xattrs kept: not re-created", func(t *testing.T, p string, _ *vmFixture) {
			xattr.Remove(filepath.Dir(p), PolicyAttr)
		}, Options{RestoreXattrs: true}, []string{KindPolicyMissing}, false},
		{"key shredded", func(t *testing.T, p string, v *vmFixture) { v.keys.gone["kek-1"] = true }, Options{}, []string{KindKeyGone}, false},
		{"kms down", func(t *testing.T, p string, v *vmFixture) { v.keys.down = true }, Options{}, []string{KindKeyUnavailable}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			v := newVM(t, filepath.Join(root, "vm1"))
			disk := filepath.Join(root, "vm1", "disk")
			plain := make([]byte, 3*objcrypt.PlainBlockSize+77)
			rand.Read(plain)
			xb := v.object(t, disk, plain)
			os.WriteFile(filepath.Join(root, "plain.log"), []byte("plain"), 0o644)
			if tc.damage != nil {
				tc.damage(t, disk, v)
			}
			opts := tc.opts
			opts.Keys = v.keys
			rep, err := Check(context.Background(), root, opts)
			if err != nil {
				t.Fatal(err)
			}
			got := kinds(rep)
			if fmt.Sprint(got) != fmt.Sprint(tc.wantKinds) {
				t.Fatalf("findings %v, want %v: %+v", got, tc.wantKinds, rep.Findings)
			}
			if rep.Corrupt() != tc.corrupt {
				t.Errorf("Corrupt() = %v, want %v", rep.Corrupt(), tc.corrupt)
			}
			if rep.Objects < 2 || rep.Plain < 1 {
				t.Errorf("counts %+v", rep)
			}
			switch raw, err := xattr.Get(filepath.Join(root, "vm1"), PolicyAttr); tc.name {
			case "xattrs and policy lost, restored":
				pol, perr := objcrypt.ParsePolicy(raw)
				if err != nil || perr != nil || pol.VMID != v.pol.VMID || pol.KEKID != v.pol.KEKID || !bytes.Equal(pol.WrappedDEK, v.pol.WrappedDEK) {
					t.Errorf("re-created policy %s (%v, %v), want the VM's identity", raw, err, perr)
				}
				if rep.PoliciesRestored != 1 {
					t.Errorf("PoliciesRestored = %d", rep.PoliciesRestored)
				}
			case "policy lost, xattrs kept: not re-created":
				if err == nil {
					t.Errorf("policy re-created for a directory whose objects kept their xattrs: %s", raw)
				}
			}
			if tc.name == "xattr restored" {
				b, err := xattr.Get(disk, HeaderAttr)
				if err != nil || !bytes.Equal(b, xb) {
					t.Errorf("restored xattr %x, %v; want %x", b, err, xb)
				}
				if rep.Verified != 1 || rep.Restored != 1 {
					t.Errorf("restored object not verified: %+v", rep)
				}
			}
		})
	}
}

func TestCheckStructureOnly(t *testing.T) {
	root := t.TempDir()
	v := newVM(t, filepath.Join(root, "vm1"))
	v.object(t, filepath.Join(root, "vm1", "disk"), []byte("hello"))
	rep, err := Check(context.Background(), root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.KeysChecked || rep.Corrupt() || rep.Encrypted != 1 || rep.BlocksVerified != 0 {
		t.Errorf("report %+v", rep)
	}
}

// TestPendingWrites: writes left in the write journal are a warning on
// the datastore root, not corruption.
func TestPendingWrites(t *testing.T) {
	for _, n := range []int{0, 3} {
		rep, err := Check(context.Background(), t.TempDir(), Options{PendingWrites: n})
		if err != nil {
			t.Fatal(err)
		}
		var found []Finding
		for _, f := range rep.Findings {
			if f.Kind == KindWritesPending {
				found = append(found, f)
			}
		}
		switch {
		case n == 0 && len(found) != 0:
			t.Errorf("no pending writes, but %v", found)
		case n > 0 && (len(found) != 1 || found[0].Severity != SeverityWarning || found[0].Path != "." || rep.Corrupt()):
			t.Errorf("%d pending writes: findings %v, corrupt %v; want one warning on .", n, found, rep.Corrupt())
		}
	}
}
