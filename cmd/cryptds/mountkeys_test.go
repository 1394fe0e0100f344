package main

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/keyring"
)

// TestKeyErrno checks the errno a FUSE caller gets for each kind of key
// failure, also when the cause itself wraps a different errno (a refused
// dial), which must not win.
func TestKeyErrno(t *testing.T) {
	dial := fmt.Errorf("dial kms:5696: %w", syscall.ECONNREFUSED)
	cases := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"destroyed at the KMS", &keyring.KeyError{ID: "k1", Err: keyring.ErrKeyUnusable, Cause: errors.New("kmip: key not found")}, syscall.EKEYREVOKED},
		{"KMS unreachable", &keyring.KeyError{ID: "k1", Err: keyring.ErrKeyUnavailable, Cause: dial}, syscall.ENOKEY},
		{"ring closed", keyring.ErrClosed, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got syscall.Errno
			errors.As(keyErrno(c.err), &got)
			if got != c.want {
				t.Errorf("errno %v, want %v", got, c.want)
			}
			if !errors.Is(keyErrno(c.err), c.err) {
				t.Error("the ring's error is no longer in the chain")
			}
		})
	}
	if keyErrno(nil) != nil {
		t.Error("keyErrno(nil) is not nil")
	}
}
