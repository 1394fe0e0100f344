//go:build integration

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cli runs the cryptds binary and returns stdout, stderr and the exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("cryptds %v: %v", args, err)
	return "", "", -1
}

// vmStatusJSON is the part of `vm status --json` the tests check.
type vmStatusJSON struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Policy    string `json:"policy"`
	KEKID     string `json:"kek_id"`
	Objects   int    `json:"objects"`
	Encrypted int    `json:"encrypted_objects"`
	Plain     int    `json:"plain_objects"`
	Leftovers int    `json:"leftovers"`
	Files     []struct {
		Path      string `json:"path"`
		Encrypted bool   `json:"encrypted"`
		KEKID     string `json:"kek_id"`
		Size      int64  `json:"size"`
	} `json:"files"`
}

func vmStatus(t *testing.T, vm string) vmStatusJSON {
	t.Helper()
	out, stderr, code := cli(t, "vm", "status", "--json", vm)
	if code != 0 {
		t.Fatalf("vm status %s: exit %d: %s", vm, code, stderr)
	}
	var s vmStatusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("vm status --json: %v\n%s", err, out)
	}
	return s
}

func vmList(t *testing.T, mnt string) map[string]vmStatusJSON {
	t.Helper()
	out, stderr, code := cli(t, "vm", "list", "--json", mnt)
	if code != 0 {
		t.Fatalf("vm list %s: exit %d: %s", mnt, code, stderr)
	}
	var l []vmStatusJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("vm list --json: %v\n%s", err, out)
	}
	m := map[string]vmStatusJSON{}
	for _, v := range l {
		m[v.Name] = v
	}
	return m
}

// checkState asserts list and status agree on the VM's state and counts.
func checkState(t *testing.T, mnt, name, state string, enc, plain int) {
	t.Helper()
	s := vmStatus(t, filepath.Join(mnt, name))
	if s.State != state || s.Encrypted != enc || s.Plain != plain || s.Leftovers != 0 {
		t.Errorf("vm status %s: state %s, %d encrypted, %d plain, %d leftovers; want %s, %d, %d, 0",
			name, s.State, s.Encrypted, s.Plain, s.Leftovers, state, enc, plain)
	}
	for _, f := range s.Files {
		if f.Encrypted != (state == "encrypted") || (f.Encrypted && f.KEKID != s.KEKID) {
			t.Errorf("object %s: encrypted=%v kek %q (VM kek %q), want state %s", f.Path, f.Encrypted, f.KEKID, s.KEKID, state)
		}
	}
	l := vmList(t, mnt)[name]
	if l.State != state || l.Objects != enc+plain || l.KEKID != s.KEKID {
		t.Errorf("vm list row %+v disagrees with status (state %s, %d objects, kek %s)", l, state, enc+plain, s.KEKID)
	}
}

// treeSums returns sha256 of every regular file under dir, by relative path.
func treeSums(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sums[rel] = [32]byte(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// halfConvertedSums is treeSums of a VM an interrupted vm encrypt left
// half converted: the mount serves its encrypted objects, but not the
// plain ones not converted yet (never a plain object inside an encrypted
// VM), so those are read from the backing directory, where they are the
// plaintext itself.
func halfConvertedSums(t *testing.T, vm, backingVM string) map[string][32]byte {
	t.Helper()
	sums := treeSums(t, backingVM)
	for rel := range sums {
		if _, err := unix.Getxattr(filepath.Join(backingVM, rel), "user.cryptds.hdr", nil); err != nil {
			continue // plain: the backing bytes are the data
		}
		b, err := os.ReadFile(filepath.Join(vm, rel))
		if err != nil {
			t.Fatalf("encrypted object %s through the mount: %v", rel, err)
		}
		sums[rel] = sha256.Sum256(b)
	}
	return sums
}

func sameSums(t *testing.T, what string, got, want map[string][32]byte) {
	t.Helper()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(got) != len(want) {
		t.Errorf("%s: %d files, want %d (%v)", what, len(got), len(want), names)
	}
	for _, n := range names {
		if got[n] != want[n] {
			t.Errorf("%s: %s differs", what, n)
		}
	}
}

// allocatedBytes is what du reports for a file.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// makeVM creates a VM directory with a sparse disk, a config, a log and a
// snapshot subdirectory, all carrying the tag so leaks are searchable.
func makeVM(t *testing.T, mnt, name, tag string, diskSize int64, dataMiB int) string {
	t.Helper()
	vm := filepath.Join(mnt, name)
	if err := os.MkdirAll(filepath.Join(vm, "snapshots"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(vm, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(diskSize); err != nil {
		t.Fatal(err)
	}
	chunk := pattern(tag+"-DISK-", 1<<20)
	for i := range dataMiB {
		// spread the data: half at the start, half in the middle
		off := int64(i) << 20
		if i >= dataMiB/2 {
			off = diskSize/2 + int64(i)<<20
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		name + ".conf":        []byte("name = \"" + tag + "-CONF\"\nmemory = 512\n"),
		name + ".log":         pattern(tag+"-LOG-", 100_000),
		"snapshots/delta.raw": pattern(tag+"-SNAP-", 3<<20+17),
		"empty.nvram":         nil,
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(vm, n), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return vm
}

func TestVMEncryptDecryptRoundTrip(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	const tag = "CRYPTDS-VMTEST"
	vm := makeVM(t, mnt, "vm1", tag, 4<<30, 16)
	makeVM(t, mnt, "vm2", "CRYPTDS-OTHERVM", 64<<20, 2) // stays plain
	original := treeSums(t, filepath.Join(backing, "vm1"))
	plainView := treeSums(t, vm)
	sameSums(t, "plain backing vs mount", plainView, original)
	sparseBefore := allocatedBytes(t, filepath.Join(backing, "vm1", "disk.raw"))
	checkState(t, mnt, "vm1", "plain", 0, 5)

	out, stderr, code := cli(t, "vm", "encrypt", vm)
	if code != 0 {
		t.Fatalf("vm encrypt: exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, "5 objects of ") || !strings.Contains(out, "MB/s") {
		t.Errorf("summary %q lacks object count or rate", out)
	}
	checkState(t, mnt, "vm1", "encrypted", 5, 0)
	checkState(t, mnt, "vm2", "plain", 0, 5)
	searchBacking(t, filepath.Join(backing, "vm1"), []byte(tag))
	sameSums(t, "mount after encrypt", treeSums(t, vm), plainView)
	sparseAfter := allocatedBytes(t, filepath.Join(backing, "vm1", "disk.raw"))
	if sparseAfter > sparseBefore*11/10+1<<20 {
		t.Errorf("sparse disk: %d bytes allocated on the backing store after encrypt, %d before", sparseAfter, sparseBefore)
	}

	// Survives a remount (keys come back from the KMS).
	m.stop()
	m = startMount(t, backing, mnt, "--dev", "--state-dir", state)
	sameSums(t, "mount after remount", treeSums(t, vm), plainView)

	out, stderr, code = cli(t, "vm", "decrypt", vm)
	if code != 0 {
		t.Fatalf("vm decrypt: exit %d\n%s%s", code, out, stderr)
	}
	checkState(t, mnt, "vm1", "plain", 0, 5)
	sameSums(t, "backing after decrypt", treeSums(t, filepath.Join(backing, "vm1")), original)
	if a := allocatedBytes(t, filepath.Join(backing, "vm1", "disk.raw")); a > sparseBefore*11/10+1<<20 {
		t.Errorf("sparse disk: %d bytes allocated after decrypt, %d originally", a, sparseBefore)
	}
	m.stop()
}

// TestVMEncryptCrash kills `cryptds vm encrypt` at random moments, several
// times per seed, then lets a run finish: the plaintext must be intact after
// every kill and nothing may be left behind.
func TestVMEncryptCrash(t *testing.T) {
	requireRoot(t)
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 2024))
			backing, mnt, state := dirs(t)
			m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
			vm := makeVM(t, mnt, "vm", "CRYPTDS-CRASH", 1<<30, 96)
			for i := range 4 {
				if err := os.WriteFile(filepath.Join(vm, fmt.Sprintf("extent-%d.vmdk", i)), pattern(fmt.Sprintf("CRYPTDS-CRASH-%d-", i), 24<<20), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			want := treeSums(t, vm)
			kills := 0
			for attempt := 0; attempt < 6; attempt++ {
				cmd := exec.Command(binary, "vm", "encrypt", vm)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case err := <-done:
					var ee *exec.ExitError
					if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 6) {
						t.Fatalf("vm encrypt: %v\n%s", err, out.String())
					}
				case <-time.After(time.Duration(50+rng.IntN(600)) * time.Millisecond):
					_ = cmd.Process.Kill()
					<-done
					kills++
				}
				// A kill may leave a .cryptds-convert-* copy behind (the
				// next run removes it); every original must be intact.
				got := halfConvertedSums(t, vm, filepath.Join(backing, "vm"))
				for n := range got {
					if strings.HasPrefix(filepath.Base(n), ".cryptds-convert-") {
						delete(got, n)
					}
				}
				sameSums(t, fmt.Sprintf("plaintext after attempt %d", attempt), got, want)
			}
			out, stderr, code := cli(t, "vm", "encrypt", vm)
			if code != 0 && code != 6 {
				t.Fatalf("final vm encrypt: exit %d\n%s%s", code, out, stderr)
			}
			t.Logf("killed %d times", kills)
			leftovers, _ := filepath.Glob(filepath.Join(backing, "vm", ".cryptds-convert-*"))
			if len(leftovers) > 0 {
				t.Errorf("leftovers after the final run: %v", leftovers)
			}
			checkState(t, mnt, "vm", "encrypted", len(want), 0)
			sameSums(t, "plaintext at the end", treeSums(t, vm), want)
			searchBacking(t, filepath.Join(backing, "vm"), []byte("CRYPTDS-CRASH"))
			m.stop()
		})
	}
}

// TestVMBadInput checks the refusals: a clear message, the documented exit
// code, nothing changed on the backing store.
func TestVMBadInput(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	plain := makeVM(t, mnt, "plainvm", "CRYPTDS-BAD-PLAIN", 8<<20, 1)
	enc := makeVM(t, mnt, "encvm", "CRYPTDS-BAD-ENC", 8<<20, 1)
	if _, stderr, code := cli(t, "vm", "encrypt", enc); code != 0 {
		t.Fatalf("setup: vm encrypt: %d %s", code, stderr)
	}
	outside := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{"datastore root", []string{"vm", "encrypt", mnt}, 6, "datastore root"},
		{"directory outside any mount", []string{"vm", "encrypt", outside}, 6, "not a VM"},
		{"file, not a directory", []string{"vm", "encrypt", filepath.Join(plain, "plainvm.conf")}, 6, "not a directory"},
		{"subdirectory of a VM", []string{"vm", "encrypt", filepath.Join(plain, "snapshots")}, 6, "not the root of a cryptds mount"},
		{"missing path", []string{"vm", "decrypt", filepath.Join(mnt, "nope")}, 6, "not a VM"},
		{"already encrypted", []string{"vm", "encrypt", enc}, 6, "already encrypted"},
		{"decrypt a plain VM", []string{"vm", "decrypt", plain}, 6, "not encrypted"},
		{"status of a non-VM", []string{"vm", "status", outside}, 6, "not a VM"},
		{"list of a non-mount", []string{"vm", "list", outside}, 3, "not the root of a cryptds mount"},
		{"no argument", []string{"vm", "encrypt"}, 2, "VMDIR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := treeSums(t, backing)
			out, stderr, code := cli(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantMsg) {
				t.Errorf("exit %d, want %d; stderr %q should mention %q (stdout %q)", code, tc.wantCode, stderr, tc.wantMsg, out)
			}
			sameSums(t, "backing store", treeSums(t, backing), before)
		})
	}
	t.Run("busy VM", func(t *testing.T) {
		f, err := os.OpenFile(filepath.Join(plain, "disk.raw"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		before := treeSums(t, backing)
		_, stderr, code := cli(t, "vm", "encrypt", plain)
		if code != 3 || !strings.Contains(stderr, "disk.raw") || !strings.Contains(stderr, fmt.Sprintf("pid %d", os.Getpid())) {
			t.Errorf("exit %d, want 3 naming disk.raw and our pid: %s", code, stderr)
		}
		sameSums(t, "backing store", treeSums(t, backing), before)
		checkState(t, mnt, "plainvm", "plain", 0, 5)
	})
	m.stop()
}
