package keyring_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
)

// fakeClock is the injected Options.Now. It starts at the real time so
// badger's wall-clock backstop TTLs are sane.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var testEndpoints = []string{"kms-a.example:5696", "kms-b.example:5696"}

// fakeKMS is an in-process KeySource that fails the way kmipclient does.
type fakeKMS struct {
	mu      sync.Mutex
	keys    map[string][]byte
	refused map[string]error // id -> kmipclient sentinel
	down    error            // kmipclient sentinel for every call, or nil
	gate    chan struct{}    // non-nil: GetKey blocks until it is closed
	badLen  bool             // return a short key
	created int

	gets    atomic.Int64
	creates atomic.Int64
}

func newKMS() *fakeKMS {
	return &fakeKMS{keys: map[string][]byte{}, refused: map[string]error{}}
}

func (f *fakeKMS) GetKey(ctx context.Context, id string) ([]byte, error) {
	f.gets.Add(1)
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, &kmipclient.Error{Op: "Get", Endpoint: testEndpoints[0], Err: kmipclient.ErrUnavailable, Cause: ctx.Err()}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return nil, &kmipclient.Error{Op: "Get", Endpoint: testEndpoints[1], Err: f.down, Cause: errors.New("dial tcp: connection refused")}
	}
	if err := f.refused[id]; err != nil {
		return nil, &kmipclient.Error{Op: "Get", Endpoint: testEndpoints[0], Reason: "WrongKeyLifecycleState", Err: err}
	}
	k, ok := f.keys[id]
	if !ok {
		return nil, &kmipclient.Error{Op: "Get", Endpoint: testEndpoints[0], Reason: "ItemNotFound", Err: kmipclient.ErrNotFound}
	}
	if f.badLen {
		return bytes.Clone(k[:16]), nil
	}
	return bytes.Clone(k), nil
}

func (f *fakeKMS) CreateKEK(_ context.Context, name string) (string, error) {
	f.creates.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return "", &kmipclient.Error{Op: "Create", Endpoint: testEndpoints[1], Err: f.down}
	}
	f.created++
	id := fmt.Sprintf("%s#%d", name, f.created)
	f.keys[id] = randKey()
	return id, nil
}

func (f *fakeKMS) Endpoints() []string { return testEndpoints }

// add creates key id and returns a copy of its bytes.
func (f *fakeKMS) add(id string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[id] = randKey()
	return bytes.Clone(f.keys[id])
}

func (f *fakeKMS) key(id string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Clone(f.keys[id])
}

func (f *fakeKMS) setDown(sentinel error) {
	f.mu.Lock()
	f.down = sentinel
	f.mu.Unlock()
}

func (f *fakeKMS) refuse(id string, sentinel error) {
	f.mu.Lock()
	f.refused[id] = sentinel
	f.mu.Unlock()
}

// hold makes GetKey block; the returned func releases it.
func (f *fakeKMS) hold() (release func()) {
	g := make(chan struct{})
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.gate = nil
			f.mu.Unlock()
			close(g)
		})
	}
}

func randKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err)
	}
	return k
}

// env is one cache mode's test setup.
type env struct {
	mode keyring.CacheMode
	kms  *fakeKMS
	clk  *fakeClock
	opts keyring.Options
}

var modes = []keyring.CacheMode{keyring.CacheMemory, keyring.CacheDisk, keyring.CacheOff}

// forEachMode runs fn once per cache mode.
func forEachMode(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Helper()
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			t.Parallel()
			fn(t, newEnv(t, m))
		})
	}
}

func newEnv(t *testing.T, mode keyring.CacheMode) *env {
	t.Helper()
	e := &env{mode: mode, kms: newKMS(), clk: newClock()}
	base := t.TempDir()
	e.opts = keyring.Options{
		Cache:       mode,
		Dir:         filepath.Join(base, "cache"),
		HostKeyFile: filepath.Join(base, "secret", "hostkey"),
		TTL:         time.Hour,
		Refresh:     -1, // tests that want refresh turn it on
		Now:         e.clk.Now,
	}
	return e
}

// open opens a Ring on e; it is closed when the test ends.
func (e *env) open(t *testing.T) *keyring.Ring {
	t.Helper()
	r, err := keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatalf("Open(%v): %v", e.mode, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// mustKEK fetches id and checks it against want.
func mustKEK(t *testing.T, r *keyring.Ring, id string, want []byte) {
	t.Helper()
	k, err := r.KEK(context.Background(), id)
	if err != nil {
		t.Fatalf("KEK(%q): %v", id, err)
	}
	defer k.Zero()
	if !bytes.Equal(k, want) {
		t.Fatalf("KEK(%q) returned the wrong key", id)
	}
}

// waitFor polls cond for up to 5 s, in 1 ms steps.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
