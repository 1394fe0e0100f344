package keyring_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cryptds/cryptds/keyring"
)

func TestHostKeyCreated(t *testing.T) {
	e := newEnv(t, keyring.CacheDisk)
	r, err := keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(e.opts.HostKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("host key file: mode %v size %d, want 0600 and 32 bytes", fi.Mode(), fi.Size())
	}
	if di, _ := os.Stat(filepath.Dir(e.opts.HostKeyFile)); di.Mode().Perm() != 0o700 {
		t.Fatalf("host key directory created with mode %v, want 0700", di.Mode())
	}
	first, _ := os.ReadFile(e.opts.HostKeyFile)
	if bytes.Equal(first, make([]byte, 32)) {
		t.Fatal("host key is all zeros")
	}
	// Reused, not replaced, on the next open.
	r, err = keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(e.opts.HostKeyFile); !bytes.Equal(first, again) {
		t.Fatal("host key file rewritten on reopen")
	}
}

func TestHostKeyRefused(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, e *env) // prepares e.opts.HostKeyFile
		want  string                     // in the error
	}{
		{"group readable", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 32, 0o640) }, "mode 0640"},
		{"world readable", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 32, 0o644) }, "mode 0644"},
		{"group writable", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 32, 0o620) }, "mode 0620"},
		{"too short", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 16, 0o600) }, "16 bytes"},
		{"too long", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 33, 0o600) }, "33 bytes"},
		{"empty", func(t *testing.T, e *env) { writeKey(t, e.opts.HostKeyFile, 0, 0o600) }, "0 bytes"},
		{"symlink", func(t *testing.T, e *env) {
			real := filepath.Join(t.TempDir(), "real")
			writeKey(t, real, 32, 0o600)
			mkdir(t, filepath.Dir(e.opts.HostKeyFile))
			if err := os.Symlink(real, e.opts.HostKeyFile); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"directory", func(t *testing.T, e *env) {
			if err := os.MkdirAll(e.opts.HostKeyFile, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"other owner", func(t *testing.T, e *env) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			writeKey(t, e.opts.HostKeyFile, 32, 0o600)
			if err := os.Chown(e.opts.HostKeyFile, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 65534"},
		{"inside the cache dir", func(t *testing.T, e *env) {
			e.opts.HostKeyFile = filepath.Join(e.opts.Dir, "hostkey")
		}, "inside the cache directory"},
		{"another host key", func(t *testing.T, e *env) {
			r := e.open(t) // creates the cache under the first key
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(e.opts.HostKeyFile); err != nil {
				t.Fatal(err)
			}
		}, "different host key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, keyring.CacheDisk)
			tc.setup(t, e)
			r, err := keyring.Open(e.kms, e.opts)
			if err == nil {
				r.Close()
				t.Fatal("Open accepted the host key file")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func writeKey(t *testing.T, path string, n int, mode os.FileMode) {
	t.Helper()
	mkdir(t, filepath.Dir(path))
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, n), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile's mode is masked by umask
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}
