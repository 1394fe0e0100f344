//go:build integration

package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// backingAlloc is the space allocated to a backing file.
func backingAlloc(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestConversionsKeepAllocation: vm encrypt, vm rekey --deep and vm
// decrypt keep a preallocated (thick) disk allocated on the backing
// store, whether its zeros were written or fallocated, and keep a sparse
// disk sparse. A fully allocated zero-filled disk used to come out as a
// few KiB.
func TestConversionsKeepAllocation(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	startMount(t, backing, mnt, "--dev", "--state-dir", state)
	const size = 16 << 20
	vm := filepath.Join(mnt, "thick")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	// Zeros written through the mount (dd if=/dev/zero, qemu-img
	// preallocation=full).
	if err := os.WriteFile(filepath.Join(vm, "zeros.raw"), make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	// fallocate (qemu-img preallocation=falloc).
	f, err := os.Create(filepath.Join(vm, "falloc.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Sparse: 1 MiB of data in a 64 MiB image.
	sparse := filepath.Join(vm, "sparse.raw")
	data := pattern("ALLOC-DATA-", 1<<20)
	if err := os.WriteFile(sparse, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(sparse, 64<<20); err != nil {
		t.Fatal(err)
	}
	sf, err := os.OpenFile(sparse, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sf.WriteAt(data, 8<<20); err != nil {
		t.Fatal(err)
	}
	sf.Close()

	check := func(step string) {
		t.Helper()
		for _, name := range []string{"zeros.raw", "falloc.raw"} {
			a := backingAlloc(t, filepath.Join(backing, "thick", name))
			t.Logf("after %s: %s: %d bytes of plaintext, %d allocated on the backing store", step, name, size, a)
			if a < size {
				t.Errorf("after %s: %s has %d bytes allocated on the backing store, want at least %d (its plaintext size)", step, name, a, size)
			}
			got, err := os.ReadFile(filepath.Join(vm, name))
			if err != nil || len(got) != size || !bytes.Equal(got, make([]byte, size)) {
				t.Errorf("after %s: %s does not read back as %d zeros (%d bytes, %v)", step, name, size, len(got), err)
			}
		}
		if a := backingAlloc(t, filepath.Join(backing, "thick", "sparse.raw")); a > 4<<20 {
			t.Errorf("after %s: the sparse disk has %d bytes allocated; its holes were filled", step, a)
		}
		got, err := os.ReadFile(sparse)
		if err != nil || !bytes.Equal(got[8<<20:9<<20], data) {
			t.Errorf("after %s: sparse disk data lost (%v)", step, err)
		}
	}
	mustCLI(t, "vm", "encrypt", vm)
	check("vm encrypt")
	mustCLI(t, "vm", "rekey", "--deep", vm)
	check("vm rekey --deep")
	mustCLI(t, "vm", "decrypt", vm)
	check("vm decrypt")
}
