package keyring_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/objcrypt"
)

func TestHitMiss(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)
		mustKEK(t, r, "vm1", want)
		mustKEK(t, r, "vm1", want)
		s := r.Stats()
		if s.Fetches != 1 || s.Misses != 1 || s.MemoryHits != 2 || s.BadgerHits != 0 || s.Keys != 1 {
			t.Fatalf("stats = %+v, want 1 fetch, 1 miss, 2 memory hits, 1 key", s)
		}

		// The returned key is the caller's: zeroing it leaves the cache intact.
		k, err := r.KEK(context.Background(), "vm1")
		if err != nil {
			t.Fatal(err)
		}
		k.Zero()
		mustKEK(t, r, "vm1", want)

		// And the lent key is the cached one, with no fetch.
		err = r.WithKEK(context.Background(), "vm1", func(k objcrypt.Key) error {
			if string(k) != string(want) {
				t.Error("WithKEK lent the wrong key")
			}
			return nil
		})
		if err != nil || r.Stats().Fetches != 1 {
			t.Fatalf("WithKEK: err %v, fetches %d", err, r.Stats().Fetches)
		}
		sentinel := errors.New("fn failed")
		if err := r.WithKEK(context.Background(), "vm1", func(objcrypt.Key) error { return sentinel }); err != sentinel {
			t.Fatalf("WithKEK returned %v, want fn's error", err)
		}
	})
}

func TestWithKEKMiss(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		var got []byte
		err := r.WithKEK(context.Background(), "vm1", func(k objcrypt.Key) error {
			got = append(got, k...)
			return nil
		})
		if err != nil || string(got) != string(want) {
			t.Fatalf("WithKEK on a miss: err %v, right key %v", err, string(got) == string(want))
		}
		err = r.WithKEK(context.Background(), "nope", func(objcrypt.Key) error { t.Error("fn called"); return nil })
		if !errors.Is(err, keyring.ErrKeyUnusable) {
			t.Fatalf("WithKEK(unknown) = %v, want ErrKeyUnusable", err)
		}
	})
}

func TestTTLExpiry(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)

		e.clk.Advance(59 * time.Minute)
		mustKEK(t, r, "vm1", want)
		if n := r.Stats().Fetches; n != 1 {
			t.Fatalf("fetches before TTL = %d, want 1", n)
		}

		e.clk.Advance(2 * time.Minute) // 61 min: expired everywhere
		mustKEK(t, r, "vm1", want)
		s := r.Stats()
		if s.Fetches != 2 || s.Expirations != 1 || s.BadgerHits != 0 {
			t.Fatalf("after TTL: stats %+v, want 2 fetches, 1 expiration, no badger hit", s)
		}

		// Expired and the KMS down: fail, never serve the stale key.
		e.clk.Advance(61 * time.Minute)
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("expired key with KMS down: err %v, want ErrKeyUnavailable", err)
		}
	})
}

func TestSingleFlight(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		release := e.kms.hold()
		defer release()

		const n = 100
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k, err := r.KEK(context.Background(), "vm1")
				if err == nil && string(k) != string(want) {
					err = errors.New("wrong key")
				}
				errs <- err
			}()
		}
		// Every caller has missed and is waiting on the one blocked fetch.
		waitFor(t, "100 misses", func() bool { return r.Stats().Misses == n })
		release()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := e.kms.gets.Load(); got != 1 {
			t.Fatalf("%d concurrent misses made %d fetches, want 1", n, got)
		}
	})
}

func TestWaiterContext(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		release := e.kms.hold()
		defer release()

		// A waiter whose context ends stops waiting; the leader carries on.
		leader := make(chan error, 1)
		go func() {
			k, err := r.KEK(context.Background(), "vm1")
			if err == nil && string(k) != string(want) {
				err = errors.New("wrong key")
			}
			leader <- err
		}()
		waitFor(t, "leader fetching", func() bool { return e.kms.gets.Load() == 1 })
		ctx, cancel := context.WithCancel(context.Background())
		waiter := make(chan error, 1)
		go func() { _, err := r.KEK(ctx, "vm1"); waiter <- err }()
		waitFor(t, "waiter joined", func() bool { return r.Stats().Misses == 2 })
		cancel()
		if err := <-waiter; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter: %v", err)
		}
		release()
		if err := <-leader; err != nil {
			t.Fatalf("leader: %v", err)
		}
	})
}

func TestLeaderCancelledWaiterRetries(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		release := e.kms.hold()
		defer release()

		ctx, cancel := context.WithCancel(context.Background())
		leader := make(chan error, 1)
		go func() { _, err := r.KEK(ctx, "vm1"); leader <- err }()
		waitFor(t, "leader fetching", func() bool { return e.kms.gets.Load() == 1 })
		waiter := make(chan error, 1)
		go func() {
			k, err := r.KEK(context.Background(), "vm1")
			if err == nil && string(k) != string(want) {
				err = errors.New("wrong key")
			}
			waiter <- err
		}()
		waitFor(t, "waiter joined", func() bool { return r.Stats().Misses == 2 })
		cancel()
		if err := <-leader; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled leader: %v", err)
		}
		// The waiter was not cancelled: it leads a new fetch instead of
		// inheriting the leader's cancellation.
		waitFor(t, "waiter's own fetch", func() bool { return e.kms.gets.Load() == 2 })
		release()
		if err := <-waiter; err != nil {
			t.Fatalf("waiter: %v", err)
		}
	})
}

func TestEvictOnRefusal(t *testing.T) {
	for _, sentinel := range []error{kmipclient.ErrNotFound, kmipclient.ErrNotUsable, kmipclient.ErrPermission} {
		t.Run(sentinel.Error(), func(t *testing.T) {
			forEachMode(t, func(t *testing.T, e *env) {
				r := e.open(t)
				want := e.kms.add("vm1")
				mustKEK(t, r, "vm1", want)

				// Seen when the TTL forces a re-fetch: fail closed.
				e.kms.refuse("vm1", sentinel)
				e.clk.Advance(2 * time.Hour)
				_, err := r.KEK(context.Background(), "vm1")
				if !errors.Is(err, keyring.ErrKeyUnusable) || !errors.Is(err, sentinel) {
					t.Fatalf("refused key: err %v, want ErrKeyUnusable and %v", err, sentinel)
				}
				if r.Stats().Keys != 0 || r.Stats().Evictions != 1 {
					t.Fatalf("refused key still cached: %+v", r.Stats())
				}
			})
		})
	}
}

func TestRefreshSeesRevocation(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		e.opts.Refresh = 10 * time.Minute
		r := e.open(t)
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)

		// Revoked at the KMS: the next hit after Refresh still serves (the
		// KMS is not on the I/O path) but evicts in the background.
		e.kms.refuse("vm1", kmipclient.ErrNotUsable)
		e.clk.Advance(11 * time.Minute)
		mustKEK(t, r, "vm1", want)
		keyring.WaitRefreshes(r)
		if s := r.Stats(); s.Keys != 0 || s.Evictions != 1 || s.Fetches != 2 {
			t.Fatalf("after background refresh of a revoked key: %+v", s)
		}
		// Evicted from badger too: with the KMS down it is not served.
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("revoked key after eviction: %v", err)
		}
	})
}

func TestRefreshKeepsKeysInUseAlive(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		e.opts.Refresh = 10 * time.Minute
		r := e.open(t)
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)
		// Four TTLs of steady use with a healthy KMS: never expires, and the
		// KMS sees about one request per Refresh, not one per lookup.
		for range 16 {
			e.clk.Advance(15 * time.Minute)
			mustKEK(t, r, "vm1", want)
			keyring.WaitRefreshes(r)
		}
		s := r.Stats()
		if s.Expirations != 0 || s.Misses != 1 || s.Fetches != 17 {
			t.Fatalf("stats %+v: want no expiration, 1 miss, 17 fetches", s)
		}
	})
}

func TestOutage(t *testing.T) {
	for _, sentinel := range []error{kmipclient.ErrUnavailable, kmipclient.ErrTLS} {
		t.Run(sentinel.Error(), func(t *testing.T) {
			forEachMode(t, func(t *testing.T, e *env) {
				e.opts.Refresh = 10 * time.Minute
				r := e.open(t)
				k1, k2 := e.kms.add("vm1"), e.kms.add("vm2")
				mustKEK(t, r, "vm1", k1)

				e.kms.setDown(sentinel)
				// Cached: keeps serving through the outage, refresh failures included.
				for range 3 {
					e.clk.Advance(15 * time.Minute)
					mustKEK(t, r, "vm1", k1)
					keyring.WaitRefreshes(r)
				}
				// Uncached: fails, naming the key, the endpoints and the cause.
				_, err := r.KEK(context.Background(), "vm2")
				if !errors.Is(err, keyring.ErrKeyUnavailable) || !errors.Is(err, sentinel) {
					t.Fatalf("uncached key in outage: %v", err)
				}
				var ke *keyring.KeyError
				if !errors.As(err, &ke) || ke.ID != "vm2" {
					t.Fatalf("error %v is not a *KeyError for vm2", err)
				}
				for _, want := range append([]string{`"vm2"`}, testEndpoints...) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not name %s", err, want)
					}
				}
				// Past the TTL: the cached key stops too.
				e.clk.Advance(16 * time.Minute)
				if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
					t.Fatalf("cached key past its TTL in outage: %v", err)
				}

				// The KMS returns: everything recovers, same Ring.
				e.kms.setDown(nil)
				mustKEK(t, r, "vm1", k1)
				mustKEK(t, r, "vm2", k2)
			})
		})
	}
}

func TestOutageRefreshRecovers(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		e.opts.Refresh = 10 * time.Minute
		r := e.open(t)
		k1 := e.kms.add("vm1")
		mustKEK(t, r, "vm1", k1)

		e.kms.setDown(kmipclient.ErrUnavailable)
		e.clk.Advance(30 * time.Minute)
		mustKEK(t, r, "vm1", k1) // refresh fails, retried a minute later
		keyring.WaitRefreshes(r)
		fetches := r.Stats().Fetches
		mustKEK(t, r, "vm1", k1) // within the retry delay: no KMS call
		keyring.WaitRefreshes(r)
		if r.Stats().Fetches != fetches {
			t.Fatal("a failed refresh was retried on the very next hit")
		}

		e.kms.setDown(nil)
		e.clk.Advance(2 * time.Minute)
		mustKEK(t, r, "vm1", k1) // refresh succeeds: TTL restarts at 32 min
		keyring.WaitRefreshes(r)
		e.kms.setDown(kmipclient.ErrUnavailable)
		e.clk.Advance(50 * time.Minute) // 82 min: past the first TTL, not the renewed one
		mustKEK(t, r, "vm1", k1)
	})
}

func TestEvict(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)
		r.Evict("vm1")
		if r.Stats().Keys != 0 {
			t.Fatal("Evict left the key in the hot map")
		}
		// Gone from badger too: not served with the KMS down.
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("evicted key: %v", err)
		}
		e.kms.setDown(nil)
		mustKEK(t, r, "vm1", want)
		if n := r.Stats().Fetches; n != 3 {
			t.Fatalf("fetches = %d, want 3", n)
		}
		r.Evict("never-cached") // harmless
	})
}

func TestEvictDuringFetch(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		want := e.kms.add("vm1")
		release := e.kms.hold()
		defer release()
		done := make(chan error, 1)
		go func() {
			k, err := r.KEK(context.Background(), "vm1")
			if err == nil && string(k) != string(want) {
				err = errors.New("wrong key")
			}
			done <- err
		}()
		waitFor(t, "fetch in flight", func() bool { return e.kms.gets.Load() == 1 })
		r.Evict("vm1") // e.g. shred raced with an open
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// The fetch that began before the eviction did not re-cache the key.
		if r.Stats().Keys != 0 {
			t.Fatal("a fetch in flight during Evict cached the key again")
		}
		e.kms.setDown(kmipclient.ErrUnavailable)
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("key evicted during fetch was served: %v", err)
		}
	})
}

func TestNewKEK(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		id, err := r.NewKEK(context.Background(), "cryptds/ds1/vm1")
		if err != nil {
			t.Fatal(err)
		}
		mustKEK(t, r, id, e.kms.key(id)) // cached by NewKEK: a hit
		if s := r.Stats(); s.Fetches != 1 || s.MemoryHits != 1 {
			t.Fatalf("after NewKEK+KEK: %+v", s)
		}

		// A failed create is reported once and never retried.
		e.kms.setDown(kmipclient.ErrUnavailable)
		creates := e.kms.creates.Load()
		_, err = r.NewKEK(context.Background(), "cryptds/ds1/vm2")
		if !errors.Is(err, kmipclient.ErrUnavailable) || !strings.Contains(err.Error(), "cryptds/ds1/vm2") {
			t.Fatalf("NewKEK with KMS down: %v", err)
		}
		if e.kms.creates.Load() != creates+1 {
			t.Fatal("CreateKEK was retried")
		}
	})
}

func TestNewKEKFetchFails(t *testing.T) {
	e := newEnv(t, keyring.CacheMemory)
	r := e.open(t)
	e.kms.badLen = true
	id, err := r.NewKEK(context.Background(), "vm1")
	if err == nil || id == "" {
		t.Fatalf("NewKEK with a failing fetch: id %q err %v; want the id and an error", id, err)
	}
}

func TestWrongKeyLength(t *testing.T) {
	e := newEnv(t, keyring.CacheMemory)
	r := e.open(t)
	e.kms.add("vm1")
	e.kms.badLen = true
	if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
		t.Fatalf("16-byte key from the KMS: %v", err)
	}
	if s := r.Stats(); s.Keys != 0 || s.FetchErrors != 1 {
		t.Fatalf("short key cached or not counted: %+v", s)
	}
}

func TestClosed(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r, err := keyring.Open(e.kms, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		want := e.kms.add("vm1")
		mustKEK(t, r, "vm1", want)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrClosed) {
			t.Fatalf("KEK after Close: %v", err)
		}
		if _, err := r.NewKEK(context.Background(), "x"); !errors.Is(err, keyring.ErrClosed) {
			t.Fatalf("NewKEK after Close: %v", err)
		}
		r.Evict("vm1") // must not panic
		_ = r.Stats()
	})
}

func TestEmptyID(t *testing.T) {
	r := newEnv(t, keyring.CacheMemory).open(t)
	if _, err := r.KEK(context.Background(), ""); err == nil {
		t.Fatal("empty id accepted")
	}
}

func TestStatsLatency(t *testing.T) {
	e := newEnv(t, keyring.CacheMemory)
	r := e.open(t)
	for _, id := range []string{"a", "b", "c"} {
		e.kms.add(id)
		if _, err := r.KEK(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = r.KEK(context.Background(), "missing")
	h := r.Stats().FetchLatency
	if h.Count != 4 || r.Stats().FetchErrors != 1 {
		t.Fatalf("latency count %d, fetch errors %d; want 4 and 1", h.Count, r.Stats().FetchErrors)
	}
	var prev uint64
	for _, b := range h.Buckets {
		if b.Count < prev || b.Count > h.Count {
			t.Fatalf("buckets not cumulative: %+v", h.Buckets)
		}
		prev = b.Count
	}
	if h.Buckets[len(h.Buckets)-1].Count != 4 { // a fake answers in well under 5 s
		t.Fatalf("buckets %+v", h.Buckets)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts keyring.Options
	}{
		{"disk without dir", keyring.Options{Cache: keyring.CacheDisk, HostKeyFile: "/tmp/x"}},
		{"disk without host key", keyring.Options{Cache: keyring.CacheDisk, Dir: t.TempDir()}},
		{"unknown mode", keyring.Options{Cache: keyring.CacheMode(9)}},
		{"negative TTL", keyring.Options{TTL: -time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := keyring.Open(newKMS(), tc.opts); err == nil {
				r.Close()
				t.Fatal("Open accepted it")
			}
		})
	}
	if _, err := keyring.Open(nil, keyring.Options{}); err == nil {
		t.Fatal("Open accepted a nil KeySource")
	}
}

func TestSweepZeroesExpiredKeys(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		r := e.open(t)
		mustKEK(t, r, "vm1", e.kms.add("vm1"))
		e.clk.Advance(30 * time.Minute)
		mustKEK(t, r, "vm2", e.kms.add("vm2"))
		e.clk.Advance(31 * time.Minute) // vm1 expired, vm2 not
		keyring.Sweep(r)
		if s := r.Stats(); s.Keys != 1 || s.Expirations != 1 {
			t.Fatalf("after sweep: %+v, want 1 key left and 1 expiration", s)
		}
	})
}

func TestKeyChangedAtKMSIsLogged(t *testing.T) {
	e := newEnv(t, keyring.CacheMemory)
	var buf strings.Builder
	var mu sync.Mutex
	e.opts.Logger = slog.New(slog.NewTextHandler(&lockedStringWriter{&mu, &buf}, nil))
	e.opts.Refresh = 10 * time.Minute
	r := e.open(t)
	mustKEK(t, r, "vm1", e.kms.add("vm1"))
	newKey := e.kms.add("vm1") // the KMS now hands out other bytes for the id
	e.clk.Advance(11 * time.Minute)
	_, _ = r.KEK(context.Background(), "vm1")
	keyring.WaitRefreshes(r)
	mustKEK(t, r, "vm1", newKey)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "different bytes") {
		t.Fatalf("changed KEK bytes not logged:\n%s", buf.String())
	}
}

type lockedStringWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l *lockedStringWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// The KMIP client is the production KeySource; keep the contract compiling.
var _ keyring.KeySource = (*kmipclient.Client)(nil)

// TestSetTTL: a shortened TTL applies at once to keys already cached (in
// memory and on disk, where a restart would otherwise serve them for the
// old TTL) and a new TTL to every key the KMS hands out afterwards.
func TestSetTTL(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		r := e.open(t)
		k1, k2 := e.kms.add("vm1"), e.kms.add("vm2")
		mustKEK(t, r, "vm1", k1)
		if err := r.SetTTL(0); err == nil {
			t.Error("SetTTL(0) accepted")
		}
		if err := r.SetTTL(10 * time.Minute); err != nil {
			t.Fatal(err)
		}
		if got := r.TTL(); got != 10*time.Minute {
			t.Fatalf("TTL() = %v after SetTTL(10m)", got)
		}
		e.kms.setDown(kmipclient.ErrUnavailable)
		e.clk.Advance(9 * time.Minute)
		mustKEK(t, r, "vm1", k1)
		e.clk.Advance(2 * time.Minute)
		if _, err := r.KEK(ctx, "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
			t.Fatalf("vm1 11 min after the TTL became 10 min, KMS down: %v, want ErrKeyUnavailable", err)
		}

		// A longer TTL is what keys fetched from now on get.
		e.kms.setDown(nil)
		if err := r.SetTTL(2 * time.Hour); err != nil {
			t.Fatal(err)
		}
		mustKEK(t, r, "vm2", k2)
		e.kms.setDown(kmipclient.ErrUnavailable)
		e.clk.Advance(90 * time.Minute)
		mustKEK(t, r, "vm2", k2)
	})
}

// TestSetTTLOnDisk: the on-disk copy of a key is shortened too, so the
// next mount cannot serve it without the KMS past the shortened TTL.
func TestSetTTLOnDisk(t *testing.T) {
	e := newEnv(t, keyring.CacheDisk)
	r := e.open(t)
	k1 := e.kms.add("vm1")
	mustKEK(t, r, "vm1", k1)
	if err := r.SetTTL(10 * time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := e.open(t) // Options.TTL is still 1h, as after a restart with the old config
	e.kms.setDown(kmipclient.ErrUnavailable)
	e.clk.Advance(9 * time.Minute)
	mustKEK(t, r2, "vm1", k1)
	e.clk.Advance(2 * time.Minute)
	if _, err := r2.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
		t.Fatalf("vm1 from disk 11 min after the TTL became 10 min: %v, want ErrKeyUnavailable", err)
	}
}
