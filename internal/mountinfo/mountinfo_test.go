package mountinfo

import (
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	table := `22 1 0:21 / /proc rw,nosuid - proc proc rw
46 27 0:43 / /mnt/my\040ds rw,nosuid,nodev,relatime - fuse.cryptds cryptds:/srv/back\134slash rw,user_id=0
garbage line
47 27 0:44 / /x rw - ext4
`
	got, err := Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Point: "/proc", Source: "proc", FSType: "proc"},
		{Point: "/mnt/my ds", Source: `cryptds:/srv/back\slash`, FSType: "fuse.cryptds"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestRead(t *testing.T) {
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == "/" {
			return
		}
	}
	t.Fatalf("no root mount in %d entries", len(ms))
}

// FuzzParse: no input makes Parse panic or invent entries (at most one per
// line), and the kernel's octal escaping of any name decodes back to it.
func FuzzParse(f *testing.F) {
	f.Add(`46 27 0:43 / /mnt/my\040ds rw,nosuid - fuse.cryptds cryptds:/srv/back\134slash rw` + "\n")
	f.Add("22 1 0:21 / /proc rw - proc proc rw\ngarbage\n - \n")
	f.Add(`1 2 3 4 \0 - a \777`)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(strings.NewReader(s))
		if err == nil && len(got) > strings.Count(s, "\n")+1 {
			t.Fatalf("%d entries from %d lines", len(got), strings.Count(s, "\n")+1)
		}
		if back := unescape(escape(s)); back != s {
			t.Fatalf("unescape(escape(%q)) = %q", s, back)
		}
	})
}

// escape is the kernel's mangling of mount paths (fs/proc_namespace.c):
// space, tab, newline and backslash as three-digit octal.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func TestContaining(t *testing.T) {
	table := []Entry{
		{Point: "/", Source: "/dev/sda1", FSType: "ext4"},
		{Point: "/mnt/ds", Source: "cryptds:/srv/ds", FSType: "fuse.cryptds"},
		{Point: "/mnt/ds2", Source: "cryptds:/srv/ds2", FSType: "fuse.cryptds"},
		{Point: "/mnt/ds/vm1/iso", Source: "/dev/sr0", FSType: "iso9660"},
	}
	tests := []struct{ path, want string }{
		{"/mnt/ds", "/mnt/ds"},
		{"/mnt/ds/vm1/disk", "/mnt/ds"},
		{"/mnt/ds2/x", "/mnt/ds2"},
		{"/mnt/dsx", "/"},
		{"/mnt/ds/vm1/iso/a", "/mnt/ds/vm1/iso"},
		{"/srv/ds/vm1", "/"},
	}
	for _, tc := range tests {
		got, ok := Containing(table, tc.path)
		if !ok || got.Point != tc.want {
			t.Errorf("Containing(%q) = %+v, %v; want mount point %s", tc.path, got, ok, tc.want)
		}
	}
	if _, ok := Containing(table[1:], "/srv/ds"); ok {
		t.Error("a path outside every listed mount was placed in one")
	}
}
