package metrics

import (
	"context"
	"time"

	"github.com/cryptds/cryptds/keyring"
)

// The instrumented source must not hide the wrapped source's optional
// keyring.KeyDestroyer, or "vm shred" would fail on a mount with metrics.
var _ keyring.KeyDestroyer = (*instrumented)(nil)

// Revoke times the wrapped source's Revoke (keyring.ErrCannotDestroy when
// it has none).
func (s *instrumented) Revoke(ctx context.Context, id string) error {
	d, ok := s.KeySource.(keyring.KeyDestroyer)
	if !ok {
		return keyring.ErrCannotDestroy
	}
	t0 := time.Now()
	err := d.Revoke(ctx, id)
	s.done("revoke", t0, err)
	return err
}

// Destroy times the wrapped source's Destroy (keyring.ErrCannotDestroy when
// it has none).
func (s *instrumented) Destroy(ctx context.Context, id string) error {
	d, ok := s.KeySource.(keyring.KeyDestroyer)
	if !ok {
		return keyring.ErrCannotDestroy
	}
	t0 := time.Now()
	err := d.Destroy(ctx, id)
	s.done("destroy", t0, err)
	return err
}

// Locate passes a name lookup through, timed like the other KMS calls.
func (s *instrumented) Locate(ctx context.Context, name string) ([]string, error) {
	l, ok := s.KeySource.(keyring.KeyLocator)
	if !ok {
		return nil, keyring.ErrCannotLocate
	}
	t0 := time.Now()
	ids, err := l.Locate(ctx, name)
	s.done("locate", t0, err)
	return ids, err
}
