package keyring

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a Ring's counters, for metrics (Prometheus later)
// and for tests. Counters only grow; compute rates from two snapshots.
type Stats struct {
	// MemoryHits counts lookups answered by the hot map (the fast path).
	MemoryHits uint64
	// Misses counts lookups the hot map could not answer; each is then
	// answered by badger, a KMS fetch (its own or a concurrent one), or fails.
	Misses uint64
	// BadgerHits counts misses answered from badger (once per single-flight).
	BadgerHits uint64
	// Fetches counts KeySource.GetKey calls, including background refreshes.
	Fetches uint64
	// FetchErrors counts fetches that returned an error.
	FetchErrors uint64
	// Evictions counts keys dropped because the KMS refused them or Evict
	// was called.
	Evictions uint64
	// Expirations counts keys dropped because their TTL ran out.
	Expirations uint64
	// Keys is the number of keys in the hot map now.
	Keys int
	// FetchLatency is the distribution of GetKey durations (errors included).
	FetchLatency Histogram
}

// Histogram is a latency distribution in the shape Prometheus wants.
type Histogram struct {
	Count uint64
	Sum   time.Duration
	// Buckets are cumulative (each counts observations <= UpperBound) and
	// ascending; the implicit +Inf bucket is Count.
	Buckets []Bucket
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound time.Duration
	Count      uint64
}

// numBuckets is the number of finite latency buckets.
const numBuckets = 10

// latencyBounds are the bucket upper bounds for KMS fetches: a loopback dev
// KMS answers in about a millisecond, a remote cluster in tens, a failover
// through dead endpoints in seconds.
func latencyBounds() [numBuckets]time.Duration {
	return [...]time.Duration{
		500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond,
		5 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond,
		100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second,
	}
}

// counters are the live atomics behind Stats.
type counters struct {
	memoryHits, misses, badgerHits atomic.Uint64
	fetches, fetchErrors           atomic.Uint64
	evictions, expirations         atomic.Uint64
	latCount                       atomic.Uint64
	latSum                         atomic.Int64
	latBuckets                     [numBuckets]atomic.Uint64 // non-cumulative
}

func (c *counters) observe(d time.Duration) {
	c.latCount.Add(1)
	c.latSum.Add(int64(d))
	for i, b := range latencyBounds() {
		if d <= b {
			c.latBuckets[i].Add(1)
			return
		}
	}
}

func (c *counters) snapshot() Stats {
	s := Stats{
		MemoryHits:  c.memoryHits.Load(),
		Misses:      c.misses.Load(),
		BadgerHits:  c.badgerHits.Load(),
		Fetches:     c.fetches.Load(),
		FetchErrors: c.fetchErrors.Load(),
		Evictions:   c.evictions.Load(),
		Expirations: c.expirations.Load(),
		FetchLatency: Histogram{
			Count: c.latCount.Load(),
			Sum:   time.Duration(c.latSum.Load()),
		},
	}
	var cum uint64
	for i, b := range latencyBounds() {
		cum += c.latBuckets[i].Load()
		s.FetchLatency.Buckets = append(s.FetchLatency.Buckets, Bucket{UpperBound: b, Count: cum})
	}
	return s
}
