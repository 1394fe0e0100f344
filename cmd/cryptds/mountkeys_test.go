package main

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	cfs "github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
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

// TestVMKeyState: how the KMS's answer about a VM's KEK reads in vm list.
func TestVMKeyState(t *testing.T) {
	unreachable := &kmipclient.Error{Op: "GetAttributes", Endpoint: "kms1:5696,kms2:5696", Err: kmipclient.ErrUnavailable}
	cases := []struct {
		st   kmipclient.State
		err  error
		want string
	}{
		{kmipclient.StateActive, nil, cfs.KeyActive},
		{kmipclient.StateDeactivated, nil, cfs.KeyShredded},
		{kmipclient.StateDestroyed, nil, cfs.KeyShredded},
		{0, &kmipclient.Error{Op: "GetAttributes", Err: kmipclient.ErrNotFound}, cfs.KeyShredded},
		{0, &kmipclient.Error{Op: "GetAttributes", Err: kmipclient.ErrPermission}, cfs.KeyRefused},
		{0, unreachable, cfs.KeyUnreachable},
		{0, &kmipclient.Error{Op: "GetAttributes", Err: kmipclient.ErrTLS}, cfs.KeyUnreachable},
		{0, &kmipclient.Error{Op: "GetAttributes", Err: kmipclient.ErrProtocol}, cfs.KeyUnknown},
	}
	for _, c := range cases {
		if got := vmKeyState(c.st, c.err); got != c.want {
			t.Errorf("vmKeyState(%v, %v) = %q, want %q", c.st, c.err, got, c.want)
		}
	}
	st, ep := mountKeys{kms: fakeStates{err: unreachable}}.KeyState(context.Background(), "k1")
	if st != cfs.KeyUnreachable || ep != "kms1:5696,kms2:5696" {
		t.Errorf("KeyState with the KMS down = %q, %q; want unreachable naming both endpoints", st, ep)
	}
}

// fakeStates is a stateSource that always fails with err.
type fakeStates struct{ err error }

func (f fakeStates) StateAt(context.Context, string) (kmipclient.State, string, error) {
	return kmipclient.StateUnknown, "", f.err
}
func (f fakeStates) Endpoints() []string { return []string{"kms1:5696", "kms2:5696"} }
