package keyring

import (
	"context"
	"errors"
	"fmt"

	"github.com/cryptds/cryptds/kmipclient"
)

// KeyDestroyer is the optional part of a KeySource that shredding a VM
// needs (kmipclient.Client implements it). It is separate from KeySource
// so read-only sources and test fakes need not offer it.
type KeyDestroyer interface {
	// Revoke deactivates key id, so the KMS no longer serves it.
	Revoke(ctx context.Context, id string) error
	// Destroy deletes key id from the KMS for good.
	Destroy(ctx context.Context, id string) error
}

// ErrCannotDestroy means the ring's KeySource does not implement
// KeyDestroyer.
var ErrCannotDestroy = errors.New("keyring: the key source cannot revoke or destroy keys")

// DestroyKEK shreds key id: it is evicted from memory and the disk cache
// first (so this host stops serving it even if the KMS is unreachable),
// then revoked and destroyed at the KMS, then evicted again in case a
// fetch raced. A key that is already revoked or destroyed is not an error,
// so an interrupted shred can simply be run again.
func (r *Ring) DestroyKEK(ctx context.Context, id string) error {
	d, ok := r.src.(KeyDestroyer)
	if !ok {
		return ErrCannotDestroy
	}
	r.drop(id)
	defer r.drop(id)
	if err := d.Revoke(ctx, id); err != nil && !gone(err) {
		return &KeyError{ID: id, Endpoints: r.src.Endpoints(), Err: ErrKeyUnavailable, Cause: fmt.Errorf("revoke: %w", err)}
	}
	if err := d.Destroy(ctx, id); err != nil && !errors.Is(err, kmipclient.ErrNotFound) {
		return &KeyError{ID: id, Endpoints: r.src.Endpoints(), Err: ErrKeyUnavailable, Cause: fmt.Errorf("destroy: %w", err)}
	}
	r.log.Warn("KEK revoked and destroyed", "kek", id)
	return nil
}

// KeyLocator is the optional part of a KeySource that finds keys by name
// (kmipclient.Client implements it).
type KeyLocator interface {
	// Locate returns the ids of every key named name.
	Locate(ctx context.Context, name string) ([]string, error)
}

// ErrCannotLocate means the ring's KeySource does not implement KeyLocator.
var ErrCannotLocate = errors.New("keyring: the key source cannot locate keys by name")

// LocateKEKs returns the ids of every KEK the KMS holds under name: a
// VM's KEKs all carry its name, so shred finds those of earlier rekeys.
func (r *Ring) LocateKEKs(ctx context.Context, name string) ([]string, error) {
	l, ok := r.src.(KeyLocator)
	if !ok {
		return nil, ErrCannotLocate
	}
	ids, err := l.Locate(ctx, name)
	if err != nil {
		return nil, &KeyError{ID: name, Endpoints: r.src.Endpoints(), Err: ErrKeyUnavailable, Cause: fmt.Errorf("locate: %w", err)}
	}
	return ids, nil
}
