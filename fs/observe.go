package fs

import "time"

// Names of the operations Config.Observe is called for. They are label
// values in the metrics exporter, so they are lower-case FUSE op names.
const (
	OpLookup  = "lookup"
	OpGetattr = "getattr"
	OpOpen    = "open"
	OpCreate  = "create"
	OpRead    = "read"
	OpWrite   = "write"
	OpFsync   = "fsync"
)

// Observer receives the duration of one served FUSE operation. go-fuse's
// node API has no per-request hook, so fs calls it itself from the hot
// paths; it runs on the request goroutine and must be cheap and safe for
// concurrent use (a Prometheus histogram Observe is).
type Observer func(op string, d time.Duration)

// opStart returns the start time of an observed operation, or the zero
// time when nobody observes (so an unobserved mount never reads the clock).
// Use it as `defer r.opDone(OpRead, r.opStart())`: the arguments are
// evaluated on entry and nothing is allocated.
func (r *Root) opStart() time.Time {
	if r.cfg.Observe == nil {
		return time.Time{}
	}
	return time.Now()
}

// opDone reports the operation started at t0 to the observer, if any.
func (r *Root) opDone(op string, t0 time.Time) {
	if r.cfg.Observe != nil {
		r.cfg.Observe(op, time.Since(t0))
	}
}
