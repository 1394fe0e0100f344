package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	cfs "github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/objcrypt"
)

// mountKeys is the key ring as the filesystem sees it: its errors carry
// the errno a FUSE caller gets (fs.Keys). Without it a shredded VM read
// as EIO after a remount, like a corrupt disk, and a KMS outage could
// surface as whatever errno the dial failed with (ECONNREFUSED).
// DestroyKEK and the rest are the ring's own.
type mountKeys struct {
	*keyring.Ring
	// kms answers KeyState (fs.KeyStater) for vm list and vm status; nil:
	// the mount says "unknown".
	kms stateSource
}

// stateSource is the part of *kmipclient.Client KeyState uses.
type stateSource interface {
	StateAt(ctx context.Context, id string) (kmipclient.State, string, error)
	Endpoints() []string
}

// KeyState asks the KMS (not the cache) for KEK id's state, for the
// mount's user.cryptds.keystate xattr.
func (k mountKeys) KeyState(ctx context.Context, id string) (state, endpoint string) {
	if k.kms == nil {
		return cfs.KeyUnknown, ""
	}
	st, ep, err := k.kms.StateAt(ctx, id)
	if ep == "" {
		var ke *kmipclient.Error
		if errors.As(err, &ke) {
			ep = ke.Endpoint
		} else {
			ep = strings.Join(k.kms.Endpoints(), ",")
		}
	}
	return vmKeyState(st, err), ep
}

// vmKeyState sums up a KEK's KMS state for a VM: active, shredded (revoked,
// destroyed or unknown to the KMS), unreachable or refused.
func vmKeyState(st kmipclient.State, err error) string {
	switch {
	case err == nil && st == kmipclient.StateActive:
		return cfs.KeyActive
	case err == nil, errors.Is(err, kmipclient.ErrNotFound), errors.Is(err, kmipclient.ErrNotUsable):
		return cfs.KeyShredded
	case errors.Is(err, kmipclient.ErrPermission):
		return cfs.KeyRefused
	case errors.Is(err, kmipclient.ErrUnreachable):
		return cfs.KeyUnreachable
	}
	return cfs.KeyUnknown
}

// KEK is the ring's KEK with its errors given an errno.
func (k mountKeys) KEK(ctx context.Context, id string) (objcrypt.Key, error) {
	key, err := k.Ring.KEK(ctx, id)
	return key, keyErrno(err)
}

// NewKEK is the ring's NewKEK with its errors given an errno.
func (k mountKeys) NewKEK(ctx context.Context, name string) (string, error) {
	id, err := k.Ring.NewKEK(ctx, name)
	return id, keyErrno(err)
}

// LocateKEKs is the ring's LocateKEKs with its errors given an errno.
func (k mountKeys) LocateKEKs(ctx context.Context, name string) ([]string, error) {
	ids, err := k.Ring.LocateKEKs(ctx, name)
	return ids, keyErrno(err)
}

// keyErrno puts the errno first in err's chain, where fs looks for it:
// EKEYREVOKED for a key the KMS refuses for good (destroyed, revoked,
// withdrawn from this host), ENOKEY for one it cannot be asked for now.
func keyErrno(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keyring.ErrKeyUnusable):
		return fmt.Errorf("%w: %w", syscall.EKEYREVOKED, err)
	case errors.Is(err, keyring.ErrKeyUnavailable):
		return fmt.Errorf("%w: %w", syscall.ENOKEY, err)
	}
	return err
}
