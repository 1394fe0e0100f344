package keyring

import (
	"fmt"
	"log/slog"
	"time"
)

// CacheMode selects where the ring keeps keys besides its hot in-memory map.
// It is the value of the CLI's --key-cache flag.
type CacheMode int

const (
	// CacheMemory keeps keys only in process memory (the hot map plus badger
	// in in-memory mode): nothing unwrapped ever touches disk, as in vSphere.
	// It is the zero value so an unset Options is the safe choice.
	CacheMemory CacheMode = iota
	// CacheDisk also keeps keys in a badger database on disk, encrypted at
	// rest under a host key, so a remount or host restart works while the
	// KMS is briefly unreachable (vSphere 7 "key persistence").
	CacheDisk
	// CacheOff keeps no badger cache at all. The hot map stays, because the
	// KMS must never be on the I/O path: a key is still served from memory
	// for its TTL, but nothing survives Close.
	CacheOff
)

// String returns the flag spelling, so help text and errors use the same
// words ParseCacheMode accepts.
func (m CacheMode) String() string {
	switch m {
	case CacheMemory:
		return "memory"
	case CacheDisk:
		return "disk"
	case CacheOff:
		return "off"
	}
	return fmt.Sprintf("CacheMode(%d)", int(m))
}

// ParseCacheMode turns a --key-cache flag value ("memory", "disk" or "off")
// into a CacheMode, so the CLI does not duplicate the list.
func ParseCacheMode(s string) (CacheMode, error) {
	for _, m := range []CacheMode{CacheMemory, CacheDisk, CacheOff} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("keyring: unknown key cache mode %q (want memory, disk or off)", s)
}

// Options configures a Ring. The zero value is usable: every zero field
// takes its value from DefaultOptions, the only place defaults are written.
type Options struct {
	// Cache selects the cache behind the hot map. Default: memory.
	Cache CacheMode

	// Dir is the badger directory for CacheDisk (created 0700 if missing).
	// Ignored, and never created, in the other modes. Required for disk.
	Dir string

	// HostKeyFile holds the 32 raw bytes badger encrypts the disk cache
	// with. It is created with mode 0600 from crypto/rand on first use; an
	// existing file that is not a regular file owned by this user with no
	// group/other permissions, or is not exactly 32 bytes, is refused. It
	// must not live inside Dir: a key stored next to the data it protects
	// protects nothing. Ignored except in disk mode, where it is required.
	HostKeyFile string

	// TTL bounds how long a key may be served after the KMS last handed it
	// out, in particular through a KMS outage. TTLNone keeps no key at
	// all: every KEK call asks the KMS. Default: 24h.
	TTL time.Duration

	// Refresh is the age after which a cache hit starts a background re-fetch
	// from the KMS. A success restarts the TTL, so a key in use never expires
	// while the KMS is reachable; a revoke or destroy is seen within Refresh
	// instead of TTL. A negative value disables refresh. Default: 1h.
	Refresh time.Duration

	// Logger receives the ring's and badger's messages (badger's INFO is
	// demoted to DEBUG). Nil means silent. Key bytes are never logged.
	Logger *slog.Logger

	// Now is the clock TTLs are measured with; nil means time.Now. Tests
	// inject a fake to expire entries without sleeping. Fetch latency is
	// always measured with the real monotonic clock.
	Now func() time.Time
}

// DefaultOptions returns the defaults every zero field of Options is
// replaced with. CLI help and docs should print these values rather than
// restate them.
func DefaultOptions() Options {
	return Options{
		Cache:   CacheMemory,
		TTL:     24 * time.Hour,
		Refresh: time.Hour,
		Logger:  slog.New(slog.DiscardHandler),
		Now:     time.Now,
	}
}

// TTLNone, as Options.TTL or to SetTTL, means no offline use: the ring
// keeps no key, in memory or on disk, once the call that fetched it
// returns, so every KEK call (every open of an encrypted file that is not
// already open) needs the KMS, and a key leaves this host when the last
// file using it is closed. It is what --key-ttl 0 asks for; a zero TTL in
// Options means the default, as every zero field does.
const TTLNone time.Duration = -1

// refreshRetry is how long a failed background refresh waits before a hit
// may try again, so an outage does not turn every hit into a KMS call.
const refreshRetry = time.Minute

// withDefaults fills zero fields from DefaultOptions and checks the result.
func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.TTL == 0 {
		o.TTL = d.TTL
	}
	if o.Refresh == 0 {
		o.Refresh = d.Refresh
	}
	if o.Logger == nil {
		o.Logger = d.Logger
	}
	if o.Now == nil {
		o.Now = d.Now
	}
	if o.TTL < 0 && o.TTL != TTLNone {
		return o, fmt.Errorf("keyring: TTL %v is negative", o.TTL)
	}
	switch o.Cache {
	case CacheMemory, CacheOff:
	case CacheDisk:
		if o.Dir == "" {
			return o, fmt.Errorf("keyring: key cache %q needs a directory", o.Cache)
		}
		if o.HostKeyFile == "" {
			return o, fmt.Errorf("keyring: key cache %q needs a host key file", o.Cache)
		}
	default:
		return o, fmt.Errorf("keyring: unknown key cache mode %v", o.Cache)
	}
	return o, nil
}
