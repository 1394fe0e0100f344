//go:build integration

package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// pattern returns n recognisable bytes: the tag repeated, so a search of the
// backing store for the tag finds any plaintext leak.
func pattern(tag string, n int) []byte {
	return bytes.Repeat([]byte(tag), n/len(tag)+1)[:n]
}

func encryptDir(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Setxattr(dir, "user.cryptds.policy", []byte("encrypted"), 0); err != nil {
		t.Fatalf("set policy on %s: %v", dir, err)
	}
}

func TestMountDevRoundTrip(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	vm := filepath.Join(mnt, "vm1")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	files := map[string][]byte{
		"disk.raw": pattern("CRYPTDS-ROUNDTRIP-DISK-", 3<<20+123),
		"vm1.conf": []byte("name = \"CRYPTDS-ROUNDTRIP-CONF\"\nmemory = 256\n"),
		"empty":    nil,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(vm, name), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	m.stop()
	if left, _ := filepath.Glob(filepath.Join(state, "journal", "*")); len(left) != 0 {
		t.Errorf("a clean unmount left its write journal: %v", left)
	}
	for name := range files {
		if _, err := unix.Getxattr(filepath.Join(backing, "vm1", name), "user.cryptds.hdr", nil); err != nil {
			t.Errorf("backing %s has no header xattr: %v", name, err)
		}
	}
	searchBacking(t, backing, []byte("CRYPTDS-ROUNDTRIP"))

	m = startMount(t, backing, mnt, "--dev", "--state-dir", state)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(vm, name))
		if err != nil {
			t.Fatalf("read %s after remount: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s after remount: %d bytes, sha %x; want %d bytes, sha %x", name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
		}
	}
	m.stop()
}

// devMountWithVM mounts a fresh datastore with the dev KMS, makes an
// encrypted VM directory in it and returns the mount, the directory and a
// function that mounts the same datastore again (after a kill).
func devMountWithVM(t *testing.T) (m *mountProc, vm string, remount func() *mountProc) {
	t.Helper()
	backing, mnt, state := dirs(t)
	remount = func() *mountProc { return startMount(t, backing, mnt, "--dev", "--state-dir", state) }
	m = remount()
	vm = filepath.Join(mnt, "vm")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	return m, vm, remount
}

// seededBytes returns n bytes from rng, so a seed replays the same writes.
func seededBytes(rng *rand.Rand, n int) []byte {
	buf := make([]byte, n)
	for j := range buf {
		buf[j] = byte(rng.Uint32())
	}
	return buf
}

// TestDeadMountOfAnotherDatastore: a dead mount (its daemon killed) on the
// mountpoint that belongs to another datastore is not detached silently;
// the mount is refused with exit code 3 and says how to go on, and
// cryptds umount removes the dead mount.
func TestDeadMountOfAnotherDatastore(t *testing.T) {
	backing, mnt, state := dirs(t)
	startMount(t, backing, mnt, "--dev", "--state-dir", state).kill()
	other := filepath.Join(t.TempDir(), "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "mount", "--dev", "--state-dir", state, other, mnt).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("mount over another datastore's dead mount: %v, want exit code 3\n%s", err, out)
	}
	if !strings.Contains(string(out), "whose daemon is gone") || !strings.Contains(string(out), "cryptds umount "+mnt) {
		t.Errorf("the refusal does not say what to do:\n%s", out)
	}
	run(t, binary, "umount", mnt)
	m := startMount(t, other, mnt, "--dev", "--state-dir", state)
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write through the new mount: %v", err)
	}
	m.stop()
}

// TestMountRefusals checks that mount refuses bad setups with a clear
// message and the documented exit code, and changes nothing.
func TestMountRefusals(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	nonEmpty := t.TempDir()
	inner := filepath.Join(backing, "inner")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{"missing mountpoint", []string{"--dev", "--state-dir", state, backing, filepath.Join(mnt, "nope")}, 3, "mountpoint"},
		{"non-empty mountpoint", []string{"--dev", "--state-dir", state, backing, nonEmpty}, 3, "not empty"},
		{"missing datastore", []string{"--dev", "--state-dir", state, filepath.Join(backing, "nope"), mnt}, 3, "datastore"},
		{"no kms", []string{backing, mnt}, 2, "no key server"},
		{"missing TLS file", []string{"--kmip", "127.0.0.1:1", "--kmip-ca", "/nonexistent", "--kmip-cert", "/nonexistent", "--kmip-key", "/nonexistent", backing, mnt}, 2, "--kmip-ca /nonexistent"},
		{"bad key cache", []string{"--dev", "--state-dir", state, "--key-cache", "cloud", backing, mnt}, 2, "key-cache"},
		{"mountpoint is the datastore", []string{"--dev", "--state-dir", state, backing, backing}, 3, "is the datastore itself"},
		{"mountpoint inside the datastore", []string{"--dev", "--state-dir", state, backing, inner}, 3, "inside the datastore"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"mount"}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.wantCode {
				t.Fatalf("exit %v, want code %d\n%s", err, tc.wantCode, out)
			}
			if !strings.Contains(string(out), tc.wantMsg) {
				t.Errorf("message %q does not mention %q", out, tc.wantMsg)
			}
			if isMounted(mnt) {
				t.Fatal("mounted anyway")
			}
		})
	}
	t.Run("already mounted", func(t *testing.T) {
		m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
		other := t.TempDir()
		out, err := exec.Command(binary, "mount", "--dev", "--state-dir", state, backing, other).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "already mounted") {
			t.Fatalf("second mount of the same datastore: %v\n%s", err, out)
		}
		m.stop()
	})
}
