package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func open(t *testing.T, path string) (*Journal, []Record) {
	t.Helper()
	j, recs, err := Open(path, 4, 8192)
	if err != nil {
		t.Fatal(err)
	}
	return j, recs
}

// TestEntriesOutliveTheProcess: an entry taken and never ended (the
// daemon was killed in its write) is found by the next Open, and only
// until Reset; an ended one is not.
func TestEntriesOutliveTheProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, recs := open(t, path)
	if len(recs) != 0 {
		t.Fatalf("new journal has %d records", len(recs))
	}
	j.Reset()
	ended, err := j.Begin([]byte("file-a"), 100, []byte("ended"))
	if err != nil {
		t.Fatal(err)
	}
	ended.Done()
	data := bytes.Repeat([]byte("in flight "), 800)
	if _, err := j.Begin([]byte("file-b"), 4096*3+32, data); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Begin([]byte("file-c"), 7, []byte{}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil { // as a kill would leave it: no Done
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("a journal with entries in flight was removed: %v", err)
	}

	if p, err := Pending(path); err != nil || len(p) != 2 {
		t.Fatalf("Pending: %d records, %v; want 2", len(p), err)
	}
	j, recs = open(t, path)
	want := []Record{{Target: []byte("file-b"), Off: 4096*3 + 32, Data: data}, {Target: []byte("file-c"), Off: 7, Data: []byte{}}}
	if len(recs) != len(want) {
		t.Fatalf("got %d records, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		if !bytes.Equal(r.Target, want[i].Target) || r.Off != want[i].Off || !bytes.Equal(r.Data, want[i].Data) {
			t.Errorf("record %d: %q at %d (%d bytes), want %q at %d (%d bytes)", i, r.Target, r.Off, len(r.Data), want[i].Target, want[i].Off, len(want[i].Data))
		}
	}
	// Killed again before the records were dealt with: still there.
	j.Close()
	j, recs = open(t, path)
	if len(recs) != len(want) {
		t.Fatalf("after a second kill: %d records, want %d", len(recs), len(want))
	}
	j.Reset()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an idle journal was left behind: %v", err)
	}
	if p, err := Pending(path); err != nil || len(p) != 0 {
		t.Fatalf("Pending of no journal: %d records, %v", len(p), err)
	}
	j, recs = open(t, path)
	defer j.Close()
	if len(recs) != 0 {
		t.Fatalf("after Reset: %d records", len(recs))
	}
}

// TestParseRejects: what Parse must not trust.
func TestParseRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path)
	j.Reset()
	if _, err := j.Begin([]byte("target"), 4096, bytes.Repeat([]byte{7}, 5000)); err != nil {
		t.Fatal(err)
	}
	img := bytes.Clone(j.mem)
	j.Close()
	boot, err := bootID()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(Parse(img, boot)); n != 1 {
		t.Fatalf("intact image: %d records, want 1", n)
	}
	slot := pageSize // the first slot
	otherBoot := bytes.Clone(boot)
	otherBoot[0] ^= 1
	tests := []struct {
		name string
		edit func(b []byte)
		boot []byte
	}{
		{"another boot", func([]byte) {}, otherBoot},
		{"offset changed", func(b []byte) { b[slot+slotOff] ^= 1 }, boot},
		{"target changed", func(b []byte) { b[slot+slotTarget] ^= 1 }, boot},
		{"length past the slot", func(b []byte) { b[slot+slotLen+3] = 0xff }, boot},
		{"target length past the header", func(b []byte) { b[slot+slotTLen+1] = 0xff }, boot},
		{"bad magic", func(b []byte) { b[0] ^= 1 }, boot},
		{"slot count past the file", func(b []byte) { b[17] = 0xff }, boot},
		{"slot size not whole pages", func(b []byte) { b[20]++ }, boot},
		{"cut short", func(b []byte) {}, boot},
		{"free slot", func(b []byte) { clear(b[slot : slot+8]) }, boot},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(img)
			tc.edit(b)
			if tc.name == "cut short" {
				b = b[:pageSize+100]
			}
			if recs := Parse(b, tc.boot); len(recs) != 0 {
				t.Fatalf("got %d records", len(recs))
			}
		})
	}
}

// TestBusy: a second process (or mount) of the same journal is refused.
func TestBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path)
	defer j.Close()
	if _, _, err := Open(path, 4, 8192); !errors.Is(err, ErrBusy) {
		t.Fatalf("second open: %v, want ErrBusy", err)
	}
}

// TestBeginLimits: entries larger than a slot are refused, not cut.
func TestBeginLimits(t *testing.T) {
	j, _ := open(t, filepath.Join(t.TempDir(), "j"))
	defer j.Close()
	j.Reset()
	if _, err := j.Begin(nil, 0, make([]byte, j.MaxData()+1)); err == nil {
		t.Error("an entry larger than a slot was taken")
	}
	if _, err := j.Begin(make([]byte, maxTarget+1), 0, nil); err == nil {
		t.Error("a target larger than the slot header was taken")
	}
}

// TestConcurrentEntries: more writers than slots wait for one, and every
// entry ends; run with -race.
func TestConcurrentEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path)
	j.Reset()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				e, err := j.Begin([]byte{byte(g)}, int64(i), bytes.Repeat([]byte{byte(i)}, 100+i))
				if err != nil {
					t.Error(err)
					return
				}
				e.Done()
			}
		})
	}
	wg.Wait()
	j.Close()
	j, recs := open(t, path)
	defer j.Close()
	if len(recs) != 0 {
		t.Fatalf("%d records left after every entry ended", len(recs))
	}
}

// FuzzParse: no journal image makes Parse panic or return a record
// larger than its slot.
func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	j, _, err := Open(filepath.Join(dir, "j"), 2, 4096)
	if err != nil {
		f.Fatal(err)
	}
	j.Reset()
	if _, err := j.Begin([]byte("seed"), 4096, []byte("seed data")); err != nil {
		f.Fatal(err)
	}
	f.Add(bytes.Clone(j.mem))
	j.Close()
	boot, err := bootID()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		copy(img[min(len(img), 24):], boot) // past the boot check, most of the time
		for _, r := range Parse(img, boot) {
			if len(r.Target) > maxTarget || len(r.Data) > len(img) || r.Off < 0 {
				t.Fatalf("record out of bounds: target %d, data %d, off %d", len(r.Target), len(r.Data), r.Off)
			}
		}
	})
}

// TestAllocated: the journal's blocks are allocated at Open, so a store
// into the mapping never needs space (a full filesystem would answer
// with SIGBUS), and a filesystem without the space refuses at Open.
func TestAllocated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path)
	defer j.Close()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < st.Size {
		t.Fatalf("journal of %d bytes has %d bytes allocated", st.Size, st.Blocks*512)
	}
	if os.Geteuid() != 0 {
		t.Skip("the full-filesystem case mounts a tmpfs: needs root")
	}
	small := t.TempDir()
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	defer unix.Unmount(small, 0)
	jf, _, err := Open(filepath.Join(small, "j"), 16, 8192) // 196 KiB
	if err == nil {
		jf.Close()
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("open on a full filesystem: %v, want ENOSPC", err)
	}
}
