package keyring_test

import (
	"context"
	"errors"
	"testing"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
)

// destroyingKMS is fakeKMS plus Revoke and Destroy, with kmipclient's
// answers: revoking a non-active key is ErrNotUsable, an unknown key
// ErrNotFound.
type destroyingKMS struct {
	*fakeKMS
	revoked map[string]bool
}

func (d *destroyingKMS) Revoke(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down != nil {
		return &kmipclient.Error{Op: "Revoke", Endpoint: testEndpoints[0], Err: d.down}
	}
	if _, ok := d.keys[id]; !ok {
		return &kmipclient.Error{Op: "Revoke", Err: kmipclient.ErrNotFound}
	}
	if d.revoked[id] {
		return &kmipclient.Error{Op: "Revoke", Err: kmipclient.ErrNotUsable}
	}
	d.revoked[id] = true
	d.refused[id] = kmipclient.ErrNotUsable
	return nil
}

func (d *destroyingKMS) Destroy(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down != nil {
		return &kmipclient.Error{Op: "Destroy", Endpoint: testEndpoints[0], Err: d.down}
	}
	if _, ok := d.keys[id]; !ok {
		return &kmipclient.Error{Op: "Destroy", Err: kmipclient.ErrNotFound}
	}
	if !d.revoked[id] {
		return &kmipclient.Error{Op: "Destroy", Err: kmipclient.ErrPermission}
	}
	delete(d.keys, id)
	delete(d.refused, id)
	return nil
}

func TestDestroyKEK(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		d := &destroyingKMS{fakeKMS: e.kms, revoked: map[string]bool{}}
		r, err := keyring.Open(d, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx := context.Background()
		want := e.kms.add("k1")
		mustKEK(t, r, "k1", want) // cached now
		if err := r.DestroyKEK(ctx, "k1"); err != nil {
			t.Fatalf("DestroyKEK: %v", err)
		}
		if _, err := r.KEK(ctx, "k1"); !errors.Is(err, keyring.ErrKeyUnusable) {
			t.Fatalf("KEK after destroy: %v, want ErrKeyUnusable", err)
		}
		// Idempotent: a re-run of an interrupted shred succeeds.
		if err := r.DestroyKEK(ctx, "k1"); err != nil {
			t.Fatalf("second DestroyKEK: %v", err)
		}
		// KMS down: the error says so and the key is still evicted.
		want2 := e.kms.add("k2")
		mustKEK(t, r, "k2", want2)
		e.kms.setDown(kmipclient.ErrUnavailable)
		if err := r.DestroyKEK(ctx, "k2"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("DestroyKEK with the KMS down: %v, want ErrKeyUnavailable", err)
		}
		if _, err := r.KEK(ctx, "k2"); err == nil {
			t.Fatal("a key being shredded is still served from the cache")
		}
	})
}

func TestDestroyKEKUnsupported(t *testing.T) {
	e := newEnv(t, keyring.CacheOff)
	r := e.open(t)
	if err := r.DestroyKEK(context.Background(), "x"); !errors.Is(err, keyring.ErrCannotDestroy) {
		t.Fatalf("got %v, want ErrCannotDestroy", err)
	}
}
