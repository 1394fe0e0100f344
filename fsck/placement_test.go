package fsck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/vmreg"
)

// recordOf is the mount's record of a fixture VM at dir.
func recordOf(t *testing.T, v *vmFixture, dir string) vmreg.VM {
	t.Helper()
	raw, err := v.pol.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return vmreg.VM{ID: v.pol.VMID, Dir: dir, State: vmreg.Encrypted, Policy: raw,
		KEKs: []vmreg.KEK{{ID: v.pol.KEKID, Since: time.Now().UTC()}}}
}

// TestPlacement: the attacks of a backing-store writer that only the
// placement of objects and policies shows are reported, with and without
// the mount's record.
func TestPlacement(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, root string, a, b *vmFixture)
		record bool
		want   []string
	}{
		{"clean", nil, true, nil},
		{"plain object planted in a VM", func(t *testing.T, root string, a, b *vmFixture) {
			os.WriteFile(filepath.Join(root, "vmA", "suspend.save"), []byte("planted"), 0o644)
		}, false, []string{KindPlainInVM}},
		{"object copied into another VM", func(t *testing.T, root string, a, b *vmFixture) {
			copyFile(t, filepath.Join(root, "vmB", "disk"), filepath.Join(root, "vmA", "stolen"))
		}, false, []string{KindForeignObject}},
		{"object copied into a plain subdirectory", func(t *testing.T, root string, a, b *vmFixture) {
			os.MkdirAll(filepath.Join(root, "plain", "deep"), 0o755)
			copyFile(t, filepath.Join(root, "vmB", "disk"), filepath.Join(root, "plain", "deep", "stolen"))
		}, false, []string{KindForeignObject}},
		{"policy copied onto another directory", func(t *testing.T, root string, a, b *vmFixture) {
			raw, _ := xattr.Get(filepath.Join(root, "vmB"), PolicyAttr)
			os.Mkdir(filepath.Join(root, "evil"), 0o755)
			xattr.Set(filepath.Join(root, "evil"), PolicyAttr, raw)
		}, false, []string{KindPolicyCopied}},
		{"policy copied, record known", func(t *testing.T, root string, a, b *vmFixture) {
			raw, _ := xattr.Get(filepath.Join(root, "vmB"), PolicyAttr)
			os.Mkdir(filepath.Join(root, "aaa"), 0o755) // walked before vmB
			xattr.Set(filepath.Join(root, "aaa"), PolicyAttr, raw)
		}, true, []string{KindPolicyCopied}},
		{"policy vanished, record known", func(t *testing.T, root string, a, b *vmFixture) {
			xattr.Remove(filepath.Join(root, "vmA"), PolicyAttr)
		}, true, []string{KindPolicyVanished}},
		{"recorded VM directory gone", func(t *testing.T, root string, a, b *vmFixture) {
			os.RemoveAll(filepath.Join(root, "vmB"))
		}, true, []string{KindRecordedGone}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			a := newVM(t, filepath.Join(root, "vmA"))
			b := newVM(t, filepath.Join(root, "vmB"))
			a.object(t, filepath.Join(root, "vmA", "disk"), []byte("A"))
			b.object(t, filepath.Join(root, "vmB", "disk"), []byte("B"))
			var opts Options
			if tc.record {
				opts.VMs = []vmreg.VM{recordOf(t, a, "vmA"), recordOf(t, b, "vmB")}
			}
			if tc.damage != nil {
				tc.damage(t, root, a, b)
			}
			rep, err := Check(context.Background(), root, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(rep); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("findings %v, want %v: %+v", got, tc.want, rep.Findings)
			}
			if rep.Corrupt() != (len(tc.want) > 0 && tc.want[0] != KindRecordedGone) {
				t.Errorf("Corrupt() = %v", rep.Corrupt())
			}
		})
	}
}

// copyFile copies a backing file with its header xattr.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := xattr.Get(from, HeaderAttr)
	if err != nil {
		t.Fatal(err)
	}
	if err := xattr.Set(to, HeaderAttr, raw); err != nil {
		t.Fatal(err)
	}
}
