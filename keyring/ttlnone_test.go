package keyring_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
)

// TestTTLNone: --key-ttl 0 means no offline use. The ring keeps no key:
// every KEK call asks the KMS (so it fails while the KMS is down, even
// right after a success), nothing is held in memory, and a disk cache
// filled under an earlier TTL is not served.
func TestTTLNone(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		// An earlier mount with a TTL cached vm1 (on disk in disk mode).
		k1 := e.kms.add("vm1")
		before := e.open(t)
		mustKEK(t, before, "vm1", k1)
		if err := before.Close(); err != nil {
			t.Fatal(err)
		}

		e.opts.TTL = keyring.TTLNone
		r := e.open(t)
		gets := e.kms.gets.Load()
		mustKEK(t, r, "vm1", k1)
		mustKEK(t, r, "vm1", k1)
		if n := e.kms.gets.Load() - gets; n != 2 {
			t.Errorf("two KEK calls asked the KMS %d times, want 2", n)
		}
		if n := r.Stats().Keys; n != 0 {
			t.Errorf("%d keys held in memory, want 0", n)
		}
		if _, err := r.NewKEK(ctx, "vm2"); err != nil {
			t.Fatal(err)
		}
		if n := r.Stats().Keys; n != 0 {
			t.Errorf("NewKEK left %d keys in memory, want 0", n)
		}
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(ctx, "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("KMS down, TTL none: %v, want ErrKeyUnavailable", err)
		}
	})
}

// TestSetTTLNone: a reload to --key-ttl 0 drops the keys cached so far.
func TestSetTTLNone(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		k1 := e.kms.add("vm1")
		mustKEK(t, r, "vm1", k1)
		if err := r.SetTTL(keyring.TTLNone); err != nil {
			t.Fatal(err)
		}
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("after SetTTL(TTLNone) with the KMS down: %v, want ErrKeyUnavailable", err)
		}
		e.kms.setDown(nil)
		if err := r.SetTTL(time.Hour); err != nil {
			t.Fatal(err)
		}
		mustKEK(t, r, "vm1", k1)
		e.kms.setDown(kmipclient.ErrUnavailable)
		mustKEK(t, r, "vm1", k1)
	})
}
