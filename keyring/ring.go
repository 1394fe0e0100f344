package keyring

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
)

// KeySource is where keys come from (the KMIP client implements it). The
// ring is its only caller on a host, so a KMS sees one request per key per
// refresh period, not one per file open.
type KeySource interface {
	// GetKey returns the raw bytes of key id. The ring takes ownership of
	// the returned slice and zeroes it.
	GetKey(ctx context.Context, id string) ([]byte, error)
	// CreateKEK creates (and activates) a new AES-256 KEK and returns its
	// id. It is not idempotent, so the ring never retries it.
	CreateKEK(ctx context.Context, name string) (id string, err error)
	// Endpoints lists the KMS endpoints in the order the source tries them,
	// so an outage error can name them.
	Endpoints() []string
}

// Ring holds unwrapped KEKs for the host: a hot in-memory map, an optional
// badger cache and single-flight fetches from a KeySource, so the KMS is
// contacted once per key and refresh period and never on the I/O path.
// A Ring is safe for concurrent use.
type Ring struct {
	src  KeySource
	opts Options // defaults applied
	log  *slog.Logger

	// mu guards hot. Fast-path readers take it shared; removals take it
	// exclusively, which is what lets readers copy key bytes without a
	// reference count.
	mu     sync.RWMutex
	hot    map[string]*entry // nil once closed
	closed atomic.Bool       // set under mu (exclusive)

	fmu     sync.Mutex
	flights map[string]*call // one in-progress resolution per key id

	// smu serialises badger reads, writes and deletes, so an eviction's
	// delete cannot be overtaken by a concurrent write of the same key.
	smu   sync.Mutex
	store *store // nil in CacheOff mode and once closed

	ctx         context.Context // background work; cancelled by Close
	cancel      context.CancelFunc
	wg          sync.WaitGroup // background refreshes
	janitorDone chan struct{}

	stats counters

	ttl atomic.Int64 // time.Duration: Options.TTL until SetTTL
}

// TTL is how long a key the KMS hands out from now on may be served.
func (r *Ring) TTL() time.Duration { return time.Duration(r.ttl.Load()) }

// SetTTL changes the TTL while the ring is in use (a reloaded config).
// Keys the KMS hands out from now on get the new TTL. A shorter TTL also
// brings every cached key's expiry forward to at most now+ttl, so lowering
// it takes effect at once and not only after the next refresh; a longer
// one leaves cached keys as they are until the KMS confirms them again.
//
// TTLNone drops every cached key at once (the shortening rule with a TTL
// already over) and keeps none from then on.
func (r *Ring) SetTTL(ttl time.Duration) error {
	if ttl <= 0 && ttl != TTLNone {
		return fmt.Errorf("keyring: TTL %v must be positive (or TTLNone)", ttl)
	}
	old := time.Duration(r.ttl.Swap(int64(ttl)))
	if ttl == old {
		return nil
	}
	r.log.Info("key TTL changed", "from", ttlString(old), "to", ttlString(ttl))
	if ttl > old && old != TTLNone {
		return nil
	}
	limit := r.opts.Now().Add(max(ttl, 0)).UnixNano()
	r.mu.RLock()
	for _, e := range r.hot {
		for {
			exp := e.expires.Load()
			if exp <= limit || e.expires.CompareAndSwap(exp, limit) {
				break
			}
		}
	}
	r.mu.RUnlock()
	r.smu.Lock()
	var err error
	if r.store != nil {
		err = r.store.capExpiry(limit, r.opts.Now())
	}
	r.smu.Unlock()
	return err
}

// retains reports whether keys are cached at all (TTL is not TTLNone).
func (r *Ring) retains() bool { return r.TTL() != TTLNone }

// ttlString names a TTL for logs: TTLNone is not a duration.
func ttlString(d time.Duration) string {
	if d == TTLNone {
		return "none (no offline use)"
	}
	return d.String()
}

// entry is one cached key. The hot map holds one reference and each WithKEK
// lender another; the last release zeroes the key.
type entry struct {
	key        objcrypt.Key
	expires    atomic.Int64 // Unix ns by Options.Now; only ever moved earlier (SetTTL)
	refreshAt  atomic.Int64 // Unix ns by Options.Now
	refreshing atomic.Bool
	refs       atomic.Int32
}

func newEntry(key objcrypt.Key, expires, refreshAt int64) *entry {
	e := &entry{key: key}
	e.expires.Store(expires)
	e.refreshAt.Store(refreshAt)
	e.refs.Store(1)
	return e
}

func (e *entry) release() {
	if e.refs.Add(-1) == 0 {
		e.key.Zero()
	}
}

// call is one single-flight resolution of a key id. Every participant (the
// leader and each waiter) holds a use; the last to leave zeroes key.
type call struct {
	done     chan struct{}
	key      objcrypt.Key // result, owned by the call; valid after done
	err      error
	canceled bool // the leader's own context ended: waiters retry
	users    atomic.Int32
	evicted  atomic.Bool // Evict ran meanwhile: do not cache the result
}

func (c *call) release() {
	if c.users.Add(-1) == 0 {
		c.key.Zero()
	}
}

// Open returns a Ring fetching from src with opts (zero fields take
// DefaultOptions). In disk mode it creates or checks the host key file and
// opens the encrypted badger cache; nothing is fetched until asked.
func Open(src KeySource, opts Options) (*Ring, error) {
	if src == nil {
		return nil, errors.New("keyring: nil KeySource")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := openStore(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Ring{
		src:         src,
		opts:        o,
		log:         o.Logger.With("component", "keyring"),
		hot:         make(map[string]*entry),
		flights:     make(map[string]*call),
		store:       st,
		ctx:         ctx,
		cancel:      cancel,
		janitorDone: make(chan struct{}),
	}
	r.ttl.Store(int64(o.TTL))
	go r.janitor()
	r.log.Debug("key ring open", "cache", o.Cache.String(), "ttl", ttlString(o.TTL), "refresh", o.Refresh)
	return r, nil
}

// Close stops background refreshes, zeroes every key the ring holds and
// closes badger. Later calls fail with ErrClosed. Close is idempotent.
func (r *Ring) Close() error {
	r.mu.Lock()
	if r.closed.Load() {
		r.mu.Unlock()
		return nil
	}
	r.closed.Store(true)
	hot := r.hot
	r.hot = nil
	r.mu.Unlock()

	r.cancel()
	<-r.janitorDone
	r.wg.Wait()
	for _, e := range hot {
		e.release()
	}
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.store == nil {
		return nil
	}
	err := r.store.close()
	r.store = nil
	return err
}

// KEK returns a copy of key id that the caller owns and should Zero when
// done. A hot-map hit costs one small allocation (the copy) and no lock
// contention beyond a shared read lock; a miss goes to badger, then to the
// KMS, with one fetch per id however many callers wait.
//
// Errors are *KeyError wrapping ErrKeyUnavailable (not cached and the KMS
// cannot be reached; retry later) or ErrKeyUnusable (the KMS refuses the
// key; it has been evicted), or ErrClosed.
func (r *Ring) KEK(ctx context.Context, id string) (objcrypt.Key, error) {
	now := r.opts.Now().UnixNano()
	r.mu.RLock()
	if e := r.hot[id]; e != nil && now < e.expires.Load() {
		k := make(objcrypt.Key, len(e.key))
		copy(k, e.key)
		r.maybeRefresh(id, e, now)
		r.mu.RUnlock()
		r.stats.memoryHits.Add(1)
		return k, nil
	}
	r.mu.RUnlock()
	return r.miss(ctx, id)
}

// WithKEK lends key id to fn without copying it: the zero-allocation form
// of KEK for callers that only need the key briefly (to unwrap a DEK). fn
// must not retain the key or any slice of it; the ring may zero it once fn
// returns. fn may call back into the Ring. Errors are as for KEK, or fn's.
func (r *Ring) WithKEK(ctx context.Context, id string, fn func(objcrypt.Key) error) error {
	now := r.opts.Now().UnixNano()
	r.mu.RLock()
	if e := r.hot[id]; e != nil && now < e.expires.Load() {
		e.refs.Add(1) // the map's reference keeps refs > 0 while we hold mu
		r.maybeRefresh(id, e, now)
		r.mu.RUnlock()
		r.stats.memoryHits.Add(1)
		defer e.release()
		return fn(e.key)
	}
	r.mu.RUnlock()
	k, err := r.miss(ctx, id)
	if err != nil {
		return err
	}
	defer k.Zero()
	return fn(k)
}

// NewKEK creates a KEK named name at the KMS (never retried: Create is not
// idempotent) and caches it, so the first KEK call for the new id is a hit.
// If the create succeeds but the fetch fails, the id is returned with the
// error, so the caller can retry KEK or destroy the orphan. Errors are
// *KeyError as for KEK (ID is then the name when the create failed).
func (r *Ring) NewKEK(ctx context.Context, name string) (string, error) {
	if r.closed.Load() {
		return "", ErrClosed
	}
	id, err := r.src.CreateKEK(ctx, name)
	if err != nil {
		// A *KeyError like KEK's, so callers classify a KMS that cannot
		// be reached (or refuses) the same way for both calls.
		kind := ErrKeyUnavailable
		if gone(err) {
			kind = ErrKeyUnusable
		}
		return "", fmt.Errorf("keyring: create KEK %q: %w", name,
			&KeyError{ID: name, Endpoints: slices.Clone(r.src.Endpoints()), Err: kind, Cause: err})
	}
	k, err := r.miss(ctx, id)
	if err != nil {
		return id, fmt.Errorf("keyring: KEK %q created as %q but not fetched: %w", name, id, err)
	}
	k.Zero()
	r.log.Info("KEK created", "name", name, "kek", id)
	return id, nil
}

// Evict drops key id from memory and badger, zeroing what the ring owns, and
// keeps a fetch already in flight from caching it again. Call it after
// revoking or destroying a key (shred, rekey) so this host stops serving it
// at once rather than at its next refresh.
func (r *Ring) Evict(id string) {
	r.drop(id)
	r.log.Info("KEK evicted", "kek", id)
}

// Stats returns a snapshot of the counters.
func (r *Ring) Stats() Stats {
	s := r.stats.snapshot()
	r.mu.RLock()
	s.Keys = len(r.hot)
	r.mu.RUnlock()
	return s
}

// maybeRefresh starts a background re-fetch of e once it is old enough.
// The caller holds r.mu shared, which orders wg.Add before Close's Wait.
func (r *Ring) maybeRefresh(id string, e *entry, now int64) {
	if r.opts.Refresh < 0 || now < e.refreshAt.Load() || !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	r.wg.Add(1)
	go r.refresh(id, e)
}

// miss resolves id through the single-flight: the first caller leads
// (badger, then the KMS), later ones wait for its result and copy it.
func (r *Ring) miss(ctx context.Context, id string) (objcrypt.Key, error) {
	r.stats.misses.Add(1)
	if id == "" {
		return nil, errors.New("keyring: empty KEK id")
	}
	for {
		c, leader, err := r.join(id)
		if err != nil {
			return nil, err
		}
		if leader {
			k, promoted, err := r.resolve(ctx, id, c)
			r.finish(id, c, k, err, ctx.Err() != nil)
			if promoted != nil {
				r.confirm(id, promoted)
			}
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			c.release()
			return nil, fmt.Errorf("keyring: waiting for KEK %q: %w", id, ctx.Err())
		}
		if c.err != nil {
			err, retry := c.err, !leader && c.canceled && ctx.Err() == nil
			c.release()
			if retry { // the leader's caller gave up, not us: lead or join anew
				continue
			}
			return nil, err
		}
		k := clone(c.key)
		c.release()
		return k, nil
	}
}

// join returns id's in-flight call, or registers a new one led by the
// caller (leader true).
func (r *Ring) join(id string) (*call, bool, error) {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	if r.closed.Load() {
		return nil, false, ErrClosed
	}
	if c := r.flights[id]; c != nil {
		c.users.Add(1)
		return c, false, nil
	}
	c := &call{done: make(chan struct{})}
	c.users.Store(1)
	r.flights[id] = c
	return c, true, nil
}

// finish publishes a call's result and retires it, so later misses start a
// new resolution.
func (r *Ring) finish(id string, c *call, key objcrypt.Key, err error, canceled bool) {
	c.key, c.err, c.canceled = key, err, canceled
	r.fmu.Lock()
	delete(r.flights, id)
	r.fmu.Unlock()
	close(c.done)
}

// resolve is the leader's miss path: the hot map again (a flight may just
// have filled it), then badger, then the KMS. It returns a key the call
// owns and, when badger answered, the entry it promoted to the hot map.
func (r *Ring) resolve(ctx context.Context, id string, c *call) (objcrypt.Key, *entry, error) {
	now := r.opts.Now()
	r.mu.Lock()
	e := r.hot[id]
	if e != nil && now.UnixNano() < e.expires.Load() {
		k := clone(e.key)
		r.mu.Unlock()
		return k, nil, nil
	}
	delete(r.hot, id)
	r.mu.Unlock()
	if e != nil {
		e.release()
		r.stats.expirations.Add(1)
		r.log.Info("KEK expired from cache", "kek", id)
	}

	if !r.retains() {
		// No offline use: the disk cache of an earlier TTL is not served.
		k, err := r.fetchAndCache(ctx, id, c)
		return k, nil, err
	}
	if k, exp, ok := r.storeGet(id, now); ok {
		r.stats.badgerHits.Add(1)
		// Served without asking the KMS: due for confirmation at once.
		e := newEntry(clone(k), exp, now.UnixNano())
		if !r.insert(id, c, e) {
			e = nil
		}
		return k, e, nil
	}
	k, err := r.fetchAndCache(ctx, id, c)
	return k, nil, err
}

// confirm starts a background refresh of an entry promoted from badger
// (after a restart its key may have been revoked meanwhile). It runs once
// the miss's flight is retired, or the refresh would find it and give up.
func (r *Ring) confirm(id string, e *entry) {
	now := r.opts.Now().UnixNano()
	r.mu.RLock()
	if r.hot[id] == e {
		r.maybeRefresh(id, e, now)
	}
	r.mu.RUnlock()
}

// fetchAndCache gets id from the KMS and caches it, or evicts it if the KMS
// refuses it. It returns a key the call owns.
func (r *Ring) fetchAndCache(ctx context.Context, id string, c *call) (objcrypt.Key, error) {
	key, err := r.fetch(ctx, id)
	if err != nil {
		if gone(err) {
			r.drop(id)
			r.log.Warn("KEK evicted: the KMS refuses it", "kek", id, "err", err)
			return nil, &KeyError{ID: id, Endpoints: slices.Clone(r.src.Endpoints()), Err: ErrKeyUnusable, Cause: err}
		}
		return nil, &KeyError{ID: id, Endpoints: slices.Clone(r.src.Endpoints()), Err: ErrKeyUnavailable, Cause: err}
	}
	if !r.retains() {
		return key, nil // the caller's copy is the only one
	}
	now := r.opts.Now()
	exp := now.Add(r.TTL()).UnixNano()
	refreshAt := now.Add(r.opts.Refresh).UnixNano()
	out := clone(key)
	e := newEntry(key, exp, refreshAt)
	if r.insert(id, c, e) {
		r.persist(id, e, now)
	}
	return out, nil
}

// fetch calls the KeySource, accounting for it, and returns a key the
// caller owns.
func (r *Ring) fetch(ctx context.Context, id string) (objcrypt.Key, error) {
	r.stats.fetches.Add(1)
	start := time.Now()
	raw, err := r.src.GetKey(ctx, id)
	r.stats.observe(time.Since(start))
	defer clear(raw)
	if err != nil {
		r.stats.fetchErrors.Add(1)
		return nil, err
	}
	if len(raw) != objcrypt.KeySize {
		r.stats.fetchErrors.Add(1)
		return nil, fmt.Errorf("KMS returned a %d-byte key, want %d", len(raw), objcrypt.KeySize)
	}
	return clone(raw), nil
}

// insert puts e in the hot map unless the ring closed or Evict(id) ran
// while c was resolving; it reports whether e was inserted (else it is
// released).
func (r *Ring) insert(id string, c *call, e *entry) bool {
	r.mu.Lock()
	if r.closed.Load() || c.evicted.Load() {
		r.mu.Unlock()
		e.release()
		return false
	}
	old := r.hot[id]
	r.hot[id] = e
	changed := old != nil && subtle.ConstantTimeCompare(old.key, e.key) != 1
	r.mu.Unlock()
	if old != nil {
		old.release()
	}
	if changed {
		// A KEK id names one key forever; new bytes mean a broken or
		// impersonated KMS, and DEKs wrapped earlier will not unwrap.
		r.log.Error("the KMS returned different bytes for a cached KEK id", "kek", id)
	}
	return true
}

// persist writes e to badger if it is still the hot entry for id. Holding
// smu while checking means a concurrent drop's delete runs after our write.
func (r *Ring) persist(id string, e *entry, now time.Time) {
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.store == nil {
		return
	}
	r.mu.RLock()
	cur := r.hot[id] == e
	if cur {
		e.refs.Add(1)
	}
	r.mu.RUnlock()
	if !cur {
		return
	}
	defer e.release()
	if err := r.store.put(id, e.key, e.expires.Load(), now); err != nil {
		r.log.Error("cannot cache KEK in badger; it stays in memory only", "kek", id, "err", err)
	}
}

// storeGet reads id from badger, logging (not returning) failures: a broken
// cache must not stop the KMS path.
func (r *Ring) storeGet(id string, now time.Time) (objcrypt.Key, int64, bool) {
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.store == nil {
		return nil, 0, false
	}
	k, exp, ok, err := r.store.get(id, now)
	if err != nil {
		r.log.Error("cannot read KEK from badger; asking the KMS", "kek", id, "err", err)
		return nil, 0, false
	}
	// Stored at the TTL of its day; a TTL shortened since (SetTTL, a new
	// --key-ttl) bounds it too.
	return k, min(exp, now.Add(r.TTL()).UnixNano()), ok
}

// drop removes id from the hot map and badger and stops an in-flight
// resolution of id from caching its result.
func (r *Ring) drop(id string) {
	r.fmu.Lock()
	if c := r.flights[id]; c != nil {
		c.evicted.Store(true)
	}
	r.fmu.Unlock()

	r.mu.Lock()
	e := r.hot[id]
	delete(r.hot, id)
	r.mu.Unlock()
	if e != nil {
		e.release()
	}
	r.stats.evictions.Add(1)

	r.smu.Lock()
	defer r.smu.Unlock()
	if r.store == nil {
		return
	}
	if err := r.store.delete(id); err != nil {
		r.log.Error("cannot evict KEK from badger", "kek", id, "err", err)
	}
}

// refresh re-fetches id in the background (as a single-flight, so a
// concurrent miss joins it). Success replaces e with a fresh TTL; a KMS
// refusal evicts; an outage keeps e serving until it expires and lets a hit
// retry after refreshRetry.
func (r *Ring) refresh(id string, e *entry) {
	defer r.wg.Done()
	r.fmu.Lock()
	if r.closed.Load() || r.flights[id] != nil {
		r.fmu.Unlock()
		e.refreshing.Store(false)
		return
	}
	c := &call{done: make(chan struct{})}
	c.users.Store(1)
	r.flights[id] = c
	r.fmu.Unlock()

	k, err := r.fetchAndCache(r.ctx, id, c)
	if err != nil && !errors.Is(err, ErrKeyUnusable) && r.ctx.Err() == nil {
		retry := min(refreshRetry, r.opts.Refresh)
		e.refreshAt.Store(r.opts.Now().Add(retry).UnixNano())
		r.log.Warn("KEK refresh failed; serving the cached key until it expires",
			"kek", id, "expires", time.Unix(0, e.expires.Load()), "err", err)
	}
	e.refreshing.Store(false)
	r.finish(id, c, k, err, false)
	c.release()
}

// janitor sweeps expired keys out of the hot map every sweepInterval, so a
// key nobody asks for again is zeroed at its TTL rather than at Close.
func (r *Ring) janitor() {
	defer close(r.janitorDone)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.sweep()
		}
	}
}

// sweepInterval is the janitor's period (real time). Expired entries are
// never served whatever it is; it only bounds how long their bytes linger.
const sweepInterval = time.Minute

// sweep drops and zeroes the expired entries of the hot map.
func (r *Ring) sweep() {
	now := r.opts.Now().UnixNano()
	var expired []*entry
	r.mu.Lock()
	for id, e := range r.hot {
		if now >= e.expires.Load() {
			delete(r.hot, id)
			expired = append(expired, e)
		}
	}
	r.mu.Unlock()
	for _, e := range expired {
		e.release()
		r.stats.expirations.Add(1)
	}
}

func clone(b []byte) objcrypt.Key {
	k := make(objcrypt.Key, len(b))
	copy(k, b)
	return k
}
