package kmipclient

import (
	"errors"
	"fmt"
)

// Sentinel errors callers (the keyring) branch on with errors.Is. Every
// error returned by this package that comes from a server or the transport
// wraps exactly one of them inside an *Error.
var (
	// ErrNotFound: the server does not know the id (or it was destroyed).
	ErrNotFound = errors.New("kmip: key not found")
	// ErrPermission: the server refused the operation for this client.
	ErrPermission = errors.New("kmip: permission denied")
	// ErrNotUsable: the key exists but is revoked, destroyed or in the wrong
	// state for the operation.
	ErrNotUsable = errors.New("kmip: key not usable")
	// ErrUnavailable: no endpoint could be reached or answered in time.
	ErrUnavailable = errors.New("kmip: server unavailable")
	// ErrTLS: the TLS handshake or client authentication failed.
	ErrTLS = errors.New("kmip: TLS or authentication failure")
	// ErrProtocol: anything else the server rejected (invalid field,
	// unsupported operation...).
	ErrProtocol = errors.New("kmip: request rejected")
)

// Error carries the operation, the endpoint that answered (or the last one
// tried) and the KMIP result reason, and wraps one of the sentinels.
type Error struct {
	Op       string // KMIP operation, e.g. "Get"
	Endpoint string // host:port
	Reason   string // KMIP ResultReason, e.g. "ItemNotFound"; empty for transport errors
	Err      error  // one of the sentinels above
	Cause    error  // underlying error, if any
}

func (e *Error) Error() string {
	s := fmt.Sprintf("kmip %s at %s: %v", e.Op, e.Endpoint, e.Err)
	if e.Reason != "" {
		s += " (reason " + e.Reason + ")"
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Unwrap exposes the sentinel and the cause to errors.Is/As.
func (e *Error) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}
