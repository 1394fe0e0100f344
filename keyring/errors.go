package keyring

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cryptds/cryptds/kmipclient"
)

// Sentinel errors callers branch on with errors.Is. fs maps them to errno
// without importing kmipclient (the layering forbids it); the KMIP sentinel
// stays reachable through the same error for callers that may import it.
var (
	// ErrKeyUnavailable: the key is neither cached nor fetchable right now
	// (KMS unreachable, TLS failure, timeout, unexpected answer). Transient:
	// the same call succeeds once the KMS is back, with no restart.
	ErrKeyUnavailable = errors.New("not cached and not fetchable from the KMS")
	// ErrKeyUnusable: the KMS says the key is unknown, revoked, destroyed or
	// not ours to use. The ring has evicted it everywhere and fails closed.
	ErrKeyUnusable = errors.New("unknown, revoked or not permitted at the KMS")
	// ErrClosed: the Ring was closed.
	ErrClosed = errors.New("keyring: closed")
)

// KeyError says which key failed, which KMS endpoints were tried and why,
// so an operator can act on one log line during an outage. It wraps one of
// the sentinels above and the KeySource's error (so errors.Is also matches
// kmipclient.ErrUnavailable, context.DeadlineExceeded, ...).
type KeyError struct {
	ID        string   // KEK id
	Endpoints []string // KMS endpoints the source tried, in order
	Err       error    // ErrKeyUnavailable or ErrKeyUnusable
	Cause     error    // the KeySource's error
}

func (e *KeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "keyring: KEK %q %v", e.ID, e.Err)
	if len(e.Endpoints) > 0 {
		fmt.Fprintf(&b, " (KMS endpoints tried: %s)", strings.Join(e.Endpoints, ", "))
	}
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	}
	return b.String()
}

// Unwrap exposes the sentinel and the cause to errors.Is/As.
func (e *KeyError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

// gone reports whether a KeySource error means the KMS positively refuses
// the key (as opposed to not answering): such keys are evicted at once.
// A permission denial counts: it is how a KMS withdraws a key from a host,
// and a security layer fails closed.
func gone(err error) bool {
	return errors.Is(err, kmipclient.ErrNotFound) ||
		errors.Is(err, kmipclient.ErrNotUsable) ||
		errors.Is(err, kmipclient.ErrPermission)
}

// isContextErr reports whether err is a cancellation or deadline.
func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
