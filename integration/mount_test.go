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
	"syscall"
	"testing"
	"time"

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

// killAndReread kills the daemon with SIGKILL, closes f, mounts again and
// reads f's file whole through the new mount; a read error (a block that
// fails authentication) fails the test.
func killAndReread(t *testing.T, m *mountProc, f *os.File, remount func() *mountProc) (*mountProc, []byte) {
	t.Helper()
	m.kill()
	f.Close()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(m.mnt, &fs); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of the killed mount: %v, want ENOTCONN", err)
	}
	m = remount() // must detach the dead mount itself, as a restart would
	said := func() bool { return strings.Contains(m.stderr.String(), "detached the dead mount") }
	if !waitFor(5*time.Second, said) { // the log reaches us through a pipe copier
		t.Errorf("the new daemon did not say it detached the dead mount:\n%s", m.stderr.String())
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatalf("read after crash: %v (a block failed authentication?)\nthe new daemon's log:\n%s", err, m.stderr.String())
	}
	return m, got
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

// TestKillDuringWrite kills the daemon with SIGKILL in the middle of a
// write+fsync loop: after a remount every fsync'd byte must read back and no
// block may fail authentication.
func TestKillDuringWrite(t *testing.T) {
	requireRoot(t)
	for seed := range uint64(3) {
		t.Run(string(rune('a'+seed)), func(t *testing.T) {
			m, vm, remount := devMountWithVM(t)
			path := filepath.Join(vm, "disk.raw")
			rng := rand.New(rand.NewPCG(seed, 42))
			model := make([]byte, 8<<20)
			synced := make([]byte, len(model))
			var syncedSize int64
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			killAt := time.Now().Add(time.Duration(300+rng.IntN(700)) * time.Millisecond)
			size := int64(0)
			writeErr := error(nil)
			for i := 0; time.Now().Before(killAt); i++ {
				off := rng.Int64N(int64(len(model)) - 70000)
				n := 1 + rng.IntN(65536)
				buf := seededBytes(rng, n)
				if _, writeErr = f.WriteAt(buf, off); writeErr != nil {
					break
				}
				copy(model[off:], buf)
				size = max(size, off+int64(n))
				if i%4 == 3 {
					if writeErr = f.Sync(); writeErr != nil {
						break
					}
					copy(synced, model)
					syncedSize = size
				}
			}
			if writeErr != nil {
				t.Fatalf("write before kill: %v", writeErr)
			}
			m, got := killAndReread(t, m, f, remount)
			if int64(len(got)) < syncedSize {
				t.Fatalf("file is %d bytes after crash, but %d were fsync'd", len(got), syncedSize)
			}
			// Bytes written after the last fsync may or may not be there;
			// compare only ranges both models agree on (synced == model).
			for i := int64(0); i < syncedSize; i++ {
				if synced[i] == model[i] && got[i] != synced[i] {
					t.Fatalf("byte %d: got %#x, fsync'd %#x", i, got[i], synced[i])
				}
			}
			m.stop()
		})
	}
}

// TestKillDuringTruncate kills the daemon with SIGKILL in the middle of a
// loop of writes and truncates that end inside a block (each a block
// rewrite and a cut, docs/FORMAT.md §7.1), with an fsync now and then.
// After a remount the whole file must read (no block fails
// authentication), and every byte that was fsync'd and not touched since
// must read back, up to the smallest size the file had since that fsync.
// A kill rarely lands between the two syscalls of one truncate (18 kills
// with the old, unrecorded order found nothing), so this checks the real
// binary end to end; fs's TestTruncateIntoBlockCrash builds each crash
// state on purpose.
func TestKillDuringTruncate(t *testing.T) {
	requireRoot(t)
	for seed := range uint64(3) {
		t.Run(string(rune('a'+seed)), func(t *testing.T) {
			m, vm, remount := devMountWithVM(t)
			path := filepath.Join(vm, "nvram.bin")
			rng := rand.New(rand.NewPCG(seed, 7))
			const maxSize = 256 << 10
			model := make([]byte, 0, maxSize)
			var synced []byte
			touched := make([]bool, maxSize) // written since the last fsync
			low := 0                         // smallest size since the last fsync
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			killAt := time.Now().Add(time.Duration(300+rng.IntN(700)) * time.Millisecond)
			var opErr error
			for i := 0; time.Now().Before(killAt) && opErr == nil; i++ {
				switch {
				case i%5 == 4:
					if opErr = f.Sync(); opErr == nil {
						synced = append(synced[:0], model...)
						clear(touched)
						low = len(model)
					}
				case rng.IntN(2) == 0:
					size := rng.IntN(maxSize)
					if size%4096 == 0 {
						size++ // into a block: the recorded path
					}
					if opErr = f.Truncate(int64(size)); opErr == nil {
						if size < len(model) {
							model = model[:size]
						} else {
							model = append(model, make([]byte, size-len(model))...)
						}
						low = min(low, size)
					}
				default:
					off, n := rng.IntN(maxSize-8192), 1+rng.IntN(8192)
					buf := seededBytes(rng, n)
					if _, opErr = f.WriteAt(buf, int64(off)); opErr == nil {
						if end := off + n; end > len(model) {
							model = append(model, make([]byte, end-len(model))...)
						}
						copy(model[off:], buf)
						for j := off; j < off+n; j++ {
							touched[j] = true
						}
					}
				}
			}
			if opErr != nil {
				t.Fatalf("before kill: %v", opErr)
			}
			m, got := killAndReread(t, m, f, remount)
			for i := range min(len(got), low, len(synced)) {
				if !touched[i] && got[i] != synced[i] {
					t.Fatalf("byte %d: got %#x, fsync'd %#x (file %d bytes, smallest size since the fsync %d)", i, got[i], synced[i], len(got), low)
				}
			}
			if strings.Contains(m.stderr.String(), "failed authentication") {
				t.Errorf("the mount logged an authentication failure:\n%s", m.stderr.String())
			}
			m.stop()
		})
	}
}

// TestMountRefusals checks that mount refuses bad setups with a clear
// message and the documented exit code, and changes nothing.
func TestMountRefusals(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	nonEmpty := t.TempDir()
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
		{"unreachable kms", []string{"--kmip", "127.0.0.1:1", "--kmip-ca", "/nonexistent", backing, mnt}, 4, "KMS"},
		{"bad key cache", []string{"--dev", "--state-dir", state, "--key-cache", "cloud", backing, mnt}, 2, "key-cache"},
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
