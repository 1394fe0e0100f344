package main

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/objcrypt"
)

// mountKeys is the key ring as the filesystem sees it: its errors carry
// the errno a FUSE caller gets (fs.Keys). Without it a shredded VM read
// as EIO after a remount, like a corrupt disk, and a KMS outage could
// surface as whatever errno the dial failed with (ECONNREFUSED).
// DestroyKEK and the rest are the ring's own.
type mountKeys struct{ *keyring.Ring }

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
