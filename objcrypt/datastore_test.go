package objcrypt

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDatastoreID(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"ds-0123456789abcdef", true},
		{"ds-ffffffffffffffff", true},
		{"", false},
		{"ds-", false},
		{"../../../../etc/NAME", false},
		{"ds-0123456789abcde", false},   // 15 digits
		{"ds-0123456789abcdef0", false}, // 17 digits
		{"ds-0123456789ABCDEF", false},  // upper case
		{"ds-0123456789abcde/", false},
		{"ds-0123456789abcde.", false},
		{"ds-0123456789abcde\x00", false},
		{"DS-0123456789abcdef", false},
		{"xx-0123456789abcdef", false},
		{"ds-0123456789abcdef\n", false},
	}
	for _, tc := range tests {
		got, err := ParseDatastoreID([]byte(tc.in))
		if tc.ok != (err == nil) {
			t.Errorf("ParseDatastoreID(%q) = %q, %v; want ok=%v", tc.in, got, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrHeader) {
			t.Errorf("ParseDatastoreID(%q) error %v does not wrap ErrHeader", tc.in, err)
		}
		if err == nil && got != tc.in {
			t.Errorf("ParseDatastoreID(%q) = %q", tc.in, got)
		}
	}
}

func TestNewDatastoreIDParses(t *testing.T) {
	for range 20 {
		id, err := NewDatastoreID(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseDatastoreID([]byte(id)); err != nil {
			t.Fatalf("new id %q does not parse: %v", id, err)
		}
	}
}

func TestKEKIDRefusesControlCharacters(t *testing.T) {
	for _, id := range []string{"kek\n1", "kek\x1b[31m", "kek\u202eevil", "kek\u200d", "kek\x7f", "kek\u0085"} {
		if err := checkKEKID(id); !errors.Is(err, ErrHeader) {
			t.Errorf("checkKEKID(%q) = %v, want ErrHeader", id, err)
		}
	}
	for _, id := range []string{"1", "kmip-uid-0001", "6c0e5f2a-0b0d-4c55-9b0e-8d3b1c2a4f00", "clé"} {
		if err := checkKEKID(id); err != nil {
			t.Errorf("checkKEKID(%q) = %v, want nil", id, err)
		}
	}
}

func TestKEKNameHasNoBackingText(t *testing.T) {
	var vm VMID
	vm[0] = 0xab
	name := KEKName("ds-0123456789abcdef", vm)
	if name != "cryptds/ds-0123456789abcdef/ab000000000000000000000000000000" {
		t.Fatalf("KEKName = %q", name)
	}
	if strings.Count(name, "/") != 2 {
		t.Fatalf("KEKName %q has extra separators", name)
	}
}

// FuzzParseDatastoreID: whatever the backing root's xattr holds, the
// parser never panics, and what it accepts is a single safe path component
// that re-parses to itself.
func FuzzParseDatastoreID(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := ParseDatastoreID(data)
		if err != nil {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("error %v does not wrap ErrHeader", err)
			}
			return
		}
		if strings.ContainsAny(id, "/.\x00") || id != string(data) {
			t.Fatalf("accepted unsafe id %q", id)
		}
	})
}
