package vmreg

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
)

func testVM(t testing.TB, idByte byte, dir string) VM {
	t.Helper()
	var id objcrypt.VMID
	id[0] = idByte
	pol := &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: id, KEKID: "kek-" + string('a'+rune(idByte%26)),
		WrappedDEK: make([]byte, objcrypt.WrappedDEKSize), Created: time.Unix(1700000000, 0).UTC()}
	raw, err := pol.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return VM{ID: id, Dir: dir, State: Encrypted, Policy: raw, KEKs: []KEK{{ID: pol.KEKID, Since: pol.Created}}}
}

func TestLookupNearestAncestor(t *testing.T) {
	r, _ := Open("")
	for i, d := range []string{"web01", "web01/nested", "db/db01"} {
		if err := r.Put(testVM(t, byte(i+1), d), false); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		dir    string
		want   string
		wantOK bool
	}{
		{"web01", "web01", true},
		{"web01/snap", "web01", true},
		{"web01/nested/x/y", "web01/nested", true},
		{"web010", "", false},
		{"db", "", false},
		{"db/db01/disks", "db/db01", true},
		{".", "", false},
	}
	for _, tc := range tests {
		v, ok := r.Lookup(tc.dir)
		if ok != tc.wantOK || v.Dir != tc.want {
			t.Errorf("Lookup(%q) = %q, %v; want %q, %v", tc.dir, v.Dir, ok, tc.want, tc.wantOK)
		}
	}
}

func TestRootVM(t *testing.T) {
	r, _ := Open("")
	if err := r.Put(testVM(t, 1, "."), false); err != nil {
		t.Fatal(err)
	}
	if v, ok := r.Lookup("a/b"); !ok || v.Dir != "." {
		t.Fatalf("Lookup under a root VM = %q, %v", v.Dir, ok)
	}
}

func TestPutConflicts(t *testing.T) {
	r, _ := Open("")
	a := testVM(t, 1, "web01")
	if err := r.Put(a, false); err != nil {
		t.Fatal(err)
	}
	// The same VM id claimed by another directory (a copied policy).
	b := a
	b.Dir = "web02"
	if err := r.Put(b, false); !errors.Is(err, ErrConflict) {
		t.Fatalf("same VM, other dir: %v, want ErrConflict", err)
	}
	// Another VM for the same directory: only with replace.
	c := testVM(t, 2, "web01")
	if err := r.Put(c, false); !errors.Is(err, ErrConflict) {
		t.Fatalf("other VM, same dir: %v, want ErrConflict", err)
	}
	if err := r.Put(c, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.ByID(a.ID); ok {
		t.Fatal("replaced VM still recorded")
	}
	// Updating a VM in place is allowed.
	c.State = Decrypted
	if err := r.Put(c, false); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.ByID(c.ID); v.State != Decrypted {
		t.Fatalf("state %q", v.State)
	}
}

func TestMove(t *testing.T) {
	tests := []struct {
		name     string
		dirs     []string
		from, to string
		exchange bool
		want     []string
	}{
		{"vm dir renamed", []string{"web01"}, "web01", "web02", false, []string{"web02"}},
		{"parent renamed", []string{"a/web01", "a/web02", "ab/x"}, "a", "b", false, []string{"ab/x", "b/web01", "b/web02"}},
		{"unrelated", []string{"web01"}, "web0", "x", false, []string{"web01"}},
		{"exchange", []string{"a/vm1", "b/vm2"}, "a", "b", true, []string{"a/vm2", "b/vm1"}},
		{"into subdir", []string{"vm"}, "vm", "old/vm", false, []string{"old/vm"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := Open("")
			for i, d := range tc.dirs {
				if err := r.Put(testVM(t, byte(i+1), d), false); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Move(tc.from, tc.to, tc.exchange); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range r.All() {
				got = append(got, v.Dir)
				if w, ok := r.Lookup(v.Dir); !ok || w.ID != v.ID {
					t.Errorf("index out of date for %q", v.Dir)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("dirs %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("dirs %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestPersistence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vms", "ds-0123456789abcdef.json")
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	v := testVM(t, 7, "web01")
	v.KEKs = append(v.KEKs, KEK{ID: "kek-2", Since: time.Unix(1700000100, 0).UTC()})
	v.KEKs[0].Until = v.KEKs[1].Since
	if err := r.Put(v, false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v, want 0600", st.Mode().Perm())
	}
	r2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := r2.ByID(v.ID)
	if !ok || got.Dir != "web01" || len(got.KEKs) != 2 || !got.HasKEK("kek-2") || got.KEKs[0].Until.IsZero() {
		t.Fatalf("reloaded %+v, %v", got, ok)
	}
	if err := r2.Remove(v.ID); err != nil {
		t.Fatal(err)
	}
	r3, _ := Open(p)
	if len(r3.All()) != 0 {
		t.Fatal("removed VM came back")
	}
}

func TestParseRejects(t *testing.T) {
	good := testVM(t, 1, "web01")
	enc := func(mut func(v *VM)) []byte {
		v := good.clone()
		mut(&v)
		b, _ := json.Marshal(fileFormat{Version: recordVersion, VMs: []VM{v}})
		return b
	}
	other := testVM(t, 2, "x")
	tests := map[string][]byte{
		"not json":     []byte("{"),
		"version":      []byte(`{"v":2,"vms":[]}`),
		"unknown":      []byte(`{"v":1,"vms":[],"x":1}`),
		"trailing":     []byte(`{"v":1,"vms":[]}{}`),
		"abs dir":      enc(func(v *VM) { v.Dir = "/etc" }),
		"dotdot":       enc(func(v *VM) { v.Dir = "../x" }),
		"unclean":      enc(func(v *VM) { v.Dir = "a//b" }),
		"empty dir":    enc(func(v *VM) { v.Dir = "" }),
		"state":        enc(func(v *VM) { v.State = "maybe" }),
		"policy vm":    enc(func(v *VM) { v.Policy = other.Policy }),
		"bad policy":   enc(func(v *VM) { v.Policy = json.RawMessage(`{}`) }),
		"kek control":  enc(func(v *VM) { v.KEKs[0].ID = "a\nb" }),
		"kek empty id": enc(func(v *VM) { v.KEKs[0].ID = "" }),
	}
	for name, b := range tests {
		if _, err := Parse(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Parse = %v, want ErrCorrupt", name, err)
		}
	}
	dup, _ := json.Marshal(fileFormat{Version: recordVersion, VMs: []VM{good, good}})
	if _, err := Parse(dup); !errors.Is(err, ErrCorrupt) {
		t.Errorf("duplicate VM: %v", err)
	}
	ok, _ := json.Marshal(fileFormat{Version: recordVersion, VMs: []VM{good}})
	if _, err := Parse(ok); err != nil {
		t.Errorf("good record: %v", err)
	}
}

func TestOpenRefusesCorruptRecord(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(p, []byte(`{"v":1,"vms":[{"dir":"../../etc"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

// FuzzParse: a record file never panics the parser, and what parses has
// only clean relative directories and known states.
func FuzzParse(f *testing.F) {
	good := testVM(f, 1, "web01")
	b, _ := json.Marshal(fileFormat{Version: recordVersion, VMs: []VM{good}})
	f.Add(b)
	f.Add([]byte(`{"v":1,"vms":[]}`))
	f.Add([]byte(`{"v":1,"vms":[{"dir":"../x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		vms, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, objcrypt.ErrHeader) {
				t.Fatalf("error %v is neither ErrCorrupt nor ErrHeader", err)
			}
			return
		}
		for _, v := range vms {
			if CheckDir(v.Dir) != nil {
				t.Fatalf("accepted dir %q", v.Dir)
			}
		}
	})
}
