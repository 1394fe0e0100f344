package keyring

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// hostKeySize is badger's AES-256 key size.
const hostKeySize = 32

// loadHostKey reads the badger encryption key from path, creating it (0600,
// crypto/rand) when it does not exist. It refuses anything an attacker or a
// careless copy could have loosened: a symlink, a non-regular file, group or
// other permission bits, another owner, or a wrong length.
func loadHostKey(path string) ([]byte, error) {
	for range 2 { // a second pass if another process created it first
		k, err := readHostKey(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return k, err
		}
		k, err = createHostKey(path)
		if !errors.Is(err, fs.ErrExist) {
			return k, err
		}
	}
	return nil, fmt.Errorf("keyring: host key file %s: created and removed concurrently", path)
}

func readHostKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("keyring: host key file %s is a symlink; refusing it", path)
		}
		return nil, fmt.Errorf("keyring: open host key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keyring: stat host key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("keyring: host key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("keyring: host key file %s has mode %04o; refusing it, it must not be readable or writable by group or others (chmod 600)", path, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("keyring: host key file %s is owned by uid %d, not %d; refusing it", path, st.Uid, os.Geteuid())
	}
	if fi.Size() != hostKeySize {
		return nil, fmt.Errorf("keyring: host key file %s is %d bytes, want %d", path, fi.Size(), hostKeySize)
	}
	k := make([]byte, hostKeySize)
	if _, err := io.ReadFull(f, k); err != nil {
		clear(k)
		return nil, fmt.Errorf("keyring: read host key file %s: %w", path, err)
	}
	return k, nil
}

func createHostKey(path string) (k []byte, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keyring: create host key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyring: create host key file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("keyring: close host key file: %w", cerr)
		}
		if err != nil {
			clear(k)
			k = nil
			_ = os.Remove(path) // never leave a short key behind
		}
	}()
	k = make([]byte, hostKeySize)
	if _, err := rand.Read(k); err != nil {
		return k, fmt.Errorf("keyring: generate host key: %w", err)
	}
	if _, err := f.Write(k); err != nil {
		return k, fmt.Errorf("keyring: write host key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return k, fmt.Errorf("keyring: sync host key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // make the new name durable
		_ = d.Sync()
		_ = d.Close()
	}
	return k, nil
}

// within reports whether path lies inside (or is) dir, after making both
// absolute and clean. Symlinks are not resolved; this guards against a
// mistake in configuration, not against an attacker.
func within(path, dir string) bool {
	ap, err1 := filepath.Abs(path)
	ad, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(ad, ap)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
