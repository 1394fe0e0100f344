package vmctl

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/objcrypt"
)

func TestPlainSpans(t *testing.T) {
	const hdr, cb, pb = objcrypt.HeaderRegionSize, objcrypt.CipherBlockSize, objcrypt.PlainBlockSize
	cases := []struct {
		name      string
		backing   []span
		encrypted bool
		size      int64
		want      []span
	}{
		{"plain: identity, cut at the size", []span{{0, 8192}, {1 << 20, 2 << 20}}, false, 1<<20 + 100, []span{{0, 8192}, {1 << 20, 1<<20 + 100}}},
		{"plain: touching spans merge", []span{{0, 4096}, {4096, 8192}}, false, 1 << 20, []span{{0, 8192}}},
		{"encrypted: header region only", []span{{0, hdr}}, true, 1 << 20, nil},
		{"encrypted: whole file", []span{{0, hdr + 3*cb}}, true, 3 * pb, []span{{0, 3 * pb}}},
		{"encrypted: one byte of block 2", []span{{hdr + 2*cb + 5, hdr + 2*cb + 6}}, true, 10 * pb, []span{{2 * pb, 3 * pb}}},
		{"encrypted: page-aligned extent touching blocks 0-1", []span{{0, 12288}}, true, 10 * pb, []span{{0, 2 * pb}}},
		{"encrypted: partial last block", []span{{0, hdr + cb + 100}}, true, pb + 68, []span{{0, pb + 68}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := plainSpans(c.backing, c.encrypted, c.size); !slices.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestConvertKeepsAllocation: a preallocated image (zeros written, or
// fallocated) stays allocated after a conversion; a sparse one stays
// sparse. The allocation map is read from the file itself, as a conversion
// on a mount reads it from the backing file.
func TestConvertKeepsAllocation(t *testing.T) {
	const size = 8 << 20
	cases := []struct {
		name     string
		make     func(t *testing.T, p string)
		minAlloc int64
		maxAlloc int64
	}{
		{"zeros written", func(t *testing.T, p string) {
			if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
		}, size, size + 1<<20},
		{"fallocated", func(t *testing.T, p string) {
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
				t.Skipf("fallocate: %v", err)
			}
		}, size, size + 1<<20},
		{"sparse with 1 MiB of data", func(t *testing.T, p string) {
			makeSparse(t, p, size, []extent{{3 << 20, 1 << 20}}, 3)
		}, 1 << 20, 1<<20 + 256<<10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if !supportsHoles(t, dir) {
				t.Skip("filesystem without holes")
			}
			p := filepath.Join(dir, "disk.raw")
			c.make(t, p)
			want := sha(t, p)
			conv := newObjConv()
			conv.allocated = func(size int64) ([]span, error) {
				exts, err := backingExtents(p)
				return plainSpans(exts, false, size), err
			}
			if _, err := conv.convert(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			if sha(t, p) != want {
				t.Fatal("content changed")
			}
			if a := allocated(t, p); a < c.minAlloc || a > c.maxAlloc {
				t.Errorf("allocated %d bytes after the conversion, want %d..%d", a, c.minAlloc, c.maxAlloc)
			}
		})
	}
}
