package vmctl

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	const table = `22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:35 / /mnt/ds rw,nosuid,nodev - fuse.cryptds cryptds:/srv/ds rw,user_id=0
41 22 0:36 / /mnt/with\040space rw - fuse.cryptds cryptds:/srv/with\040space rw
42 22 0:37 / /mnt/other rw - ext4 cryptds:/fake rw
47 22 0:42 / /mnt/sshfs rw - fuse.sshfs host:/srv rw
43 22 0:38 / /mnt/stacked rw - fuse.cryptds cryptds:/srv/a rw
44 43 0:39 / /mnt/stacked rw - tmpfs tmpfs rw
45 22 0:40 / /mnt/restacked rw - tmpfs tmpfs rw
46 45 0:41 / /mnt/restacked rw - fuse.cryptds cryptds:/srv/b rw
`
	mounts, err := parseMountinfo(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		point, want string
	}{
		{"/mnt/ds", "/srv/ds"},
		{"/mnt/with space", "/srv/with space"},
		{"/proc", ""},
		{"/mnt/other", ""},   // not a fuse.cryptds-like source
		{"/mnt/stacked", ""}, // covered by a tmpfs
		{"/mnt/restacked", "/srv/b"},
		{"/mnt/none", ""},
	}
	for _, tc := range tests {
		if got := backingOf(mounts, tc.point); got != tc.want {
			t.Errorf("backingOf(%q) = %q, want %q", tc.point, got, tc.want)
		}
	}
}

func TestParsePolicyValue(t *testing.T) {
	tests := []struct {
		in      string
		want    policyState
		wantErr bool
	}{
		{"none", policyState{}, false},
		{"none\n", policyState{}, false},
		{"encrypted kek=k-1 vm=abcd", policyState{encrypted: true, kek: "k-1", vmid: "abcd"}, false},
		{"encrypted kek=k-1 vm=abcd kms=kms1:5696\x00", policyState{encrypted: true, kek: "k-1", vmid: "abcd", kms: "kms1:5696"}, false},
		{"encrypted", policyState{encrypted: true}, false},
		{"", policyState{}, true},
		{"maybe", policyState{}, true},
	}
	for _, tc := range tests {
		got, err := parsePolicyValue(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parsePolicyValue(%q) = %+v, %v; want %+v, err=%v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestVMState(t *testing.T) {
	enc, none := policyState{encrypted: true}, policyState{}
	tests := []struct {
		name                  string
		p                     policyState
		enc, plain, leftovers int
		want                  string
	}{
		{"empty plain VM", none, 0, 0, 0, StatePlain},
		{"empty encrypted VM", enc, 0, 0, 0, StateEncrypted},
		{"encrypted", enc, 3, 0, 0, StateEncrypted},
		{"plain", none, 0, 3, 0, StatePlain},
		{"both kinds", enc, 2, 1, 0, StateMixed},
		{"policy set, nothing converted", enc, 0, 3, 0, StateMixed},
		{"policy removed, nothing converted", none, 3, 0, 0, StateMixed},
		{"interrupted", enc, 2, 1, 1, StateConverting},
	}
	for _, tc := range tests {
		if got := vmState(tc.p, tc.enc, tc.plain, tc.leftovers); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestCheckSpace(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		todo    []object
		encrypt bool
		wantErr error
	}{
		{"nothing", nil, true, nil},
		{"small", []object{{rel: "a", alloc: 4096}}, true, nil},
		{"too big", []object{{rel: "a", alloc: 4096}, {rel: "huge.vmdk", alloc: 1 << 60}}, false, ErrNoSpace},
	}
	for _, tc := range tests {
		err := checkSpace(dir, tc.todo, tc.encrypt)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "huge.vmdk") {
			t.Errorf("%s: message %q does not name the object", tc.name, err)
		}
	}
}

func TestResolveVMRefusesNonVM(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{dir, dir + "/missing", "/"} {
		if _, err := resolveVM(p); !errors.Is(err, ErrNotVM) {
			t.Errorf("resolveVM(%q) = %v, want ErrNotVM", p, err)
		}
	}
	if _, err := List(dir); !errors.Is(err, ErrNotMount) {
		t.Errorf("List(%q) = %v, want ErrNotMount", dir, err)
	}
}

func TestEstimate(t *testing.T) {
	tests := []struct {
		o    object
		want int64
	}{
		{object{size: 64 << 30, alloc: 1 << 30}, 1 << 30},                                 // sparse plain image
		{object{size: 100, alloc: 4096}, 100},                                             // small file, block-sized allocation
		{object{size: 8192, alloc: 4096 + 2*4128, encrypted: true}, 8192},                 // encrypted: header + 2 blocks
		{object{size: 64 << 30, alloc: 4096 + 4128*1000, encrypted: true}, 4096*1000 + 0}, // sparse encrypted
	}
	for _, tc := range tests {
		if got := estimate(tc.o); got != tc.want {
			t.Errorf("estimate(%+v) = %d, want %d", tc.o, got, tc.want)
		}
	}
}
