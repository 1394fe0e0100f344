package mountinfo

import (
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
