// Package kmipclient talks KMIP 1.1+ over mutual TLS to one or more key
// servers and gives cryptds the handful of typed operations it needs: create
// and activate a per-VM KEK, fetch it, find it by name, revoke and destroy it.
//
// It is a thin layer over github.com/ovh/kmip-go that adds what a storage
// host needs from a KMS client: ordered failover across a KMS cluster, a
// timeout on every network step, bounded retries with backoff for transport
// failures only, a small connection pool, and errors that callers branch on
// with errors.Is (ErrNotFound, ErrPermission, ErrNotUsable, ErrUnavailable,
// ErrTLS, ErrProtocol) instead of parsing the server's strings.
//
// Create is not idempotent: a Create whose request may have reached the
// server is never re-sent; the caller gets ErrUnavailable together with
// ErrOutcomeUnknown and decides (usually: Locate by name first).
//
// Key bytes returned by GetKey are never logged and never put in an error.
package kmipclient
