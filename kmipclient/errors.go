package kmipclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/ttlv"
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

// ErrUnreachable groups every way of not getting an answer from the key
// server: refused or reset connections, EOF, timeouts, unknown hosts
// (ErrUnavailable) and TLS failures (ErrTLS). An *Error wrapping either
// also matches ErrUnreachable, so callers that only need "could not reach
// or was refused by the key server" (ENOKEY, exit code 4) test that one
// sentinel instead of listing the transport's failure kinds.
var ErrUnreachable = errors.New("kmip: key server unreachable")

// ErrOutcomeUnknown accompanies ErrUnavailable when a non-idempotent request
// (Create) was possibly delivered before the connection failed: the object
// may exist on the server. It is never retried automatically; Locate the
// name before creating again, or the KMS accumulates orphan keys.
var ErrOutcomeUnknown = errors.New("kmip: request may have been committed")

// Error carries the operation, the endpoint that answered (or the last one
// tried) and the KMIP result reason, and wraps one of the sentinels.
type Error struct {
	Op string // KMIP operation, e.g. "Get"
	// Endpoint is host:port of the server that answered; when every
	// endpoint failed, all of them, comma-separated, in the order tried.
	Endpoint string
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

// Unwrap exposes the sentinel, ErrUnreachable for a transport or TLS
// failure, and the cause to errors.Is/As.
func (e *Error) Unwrap() []error {
	out := []error{e.Err}
	if e.Err == ErrUnavailable || e.Err == ErrTLS {
		out = append(out, ErrUnreachable)
	}
	if e.Cause != nil {
		out = append(out, e.Cause)
	}
	return out
}

// reasonError maps a failed batch item to the sentinel callers branch on.
// The server's message goes into Cause for the operator; servers do not echo
// key material (we never send any), but it is capped all the same.
func reasonError(op, endpoint string, bi *kmip.ResponseBatchItem) *Error {
	e := &Error{Op: op, Endpoint: endpoint, Err: sentinelFor(bi.ResultReason)}
	if bi.ResultReason != 0 {
		e.Reason = ttlv.EnumStr(bi.ResultReason)
	}
	if bi.ResultStatus != kmip.ResultStatusOperationFailed {
		// Pending or Undone: asynchronous operations we never ask for.
		e.Err = ErrProtocol
		e.Cause = fmt.Errorf("unexpected result status %s", ttlv.EnumStr(bi.ResultStatus))
		return e
	}
	if msg := strings.TrimSpace(bi.ResultMessage); msg != "" {
		const max = 200
		if len(msg) > max {
			msg = msg[:max] + "..."
		}
		e.Cause = errors.New(msg)
	}
	return e
}

// sentinelFor maps KMIP result reasons; the cases are those PyKMIP and the
// dev KMS return (TestSuitePyKMIP, TestSuiteDevKMS), everything else is
// a protocol error.
func sentinelFor(r kmip.ResultReason) error {
	switch r {
	case kmip.ResultReasonItemNotFound:
		return ErrNotFound
	case kmip.ResultReasonPermissionDenied:
		return ErrPermission
	case kmip.ResultReasonIllegalOperation, // PyKMIP: revoke of a non-active key
		kmip.ResultReasonObjectArchived,
		kmip.ResultReasonKeyValueNotPresent,
		kmip.ResultReasonNotExtractable,
		kmip.ResultReasonSensitive:
		return ErrNotUsable
	case kmip.ResultReasonAuthenticationNotSuccessful: // PyKMIP: client cert without EKU clientAuth
		return ErrTLS
	default:
		return ErrProtocol
	}
}

// classifyTransport picks the sentinel for an error that is not a KMIP result:
// dial, TLS, timeout, connection loss or an unparseable reply.
func classifyTransport(err error) error {
	if err == nil {
		return nil
	}
	var (
		verr  *tls.CertificateVerificationError
		rherr tls.RecordHeaderError
		aerr  tls.AlertError
		uaerr x509.UnknownAuthorityError
		herr  x509.HostnameError
		cierr x509.CertificateInvalidError
		operr *net.OpError
		rejd  *rejectedError
	)
	switch {
	case errors.As(err, &rejd):
		return ErrTLS
	case errors.As(err, &verr), errors.As(err, &rherr), errors.As(err, &aerr),
		errors.As(err, &uaerr), errors.As(err, &herr), errors.As(err, &cierr):
		return ErrTLS
	case errors.As(err, &operr) && operr.Op == "remote error":
		// A TLS alert from the server: it rejected our certificate.
		return ErrTLS
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.ErrClosedPipe),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ETIMEDOUT):
		return ErrUnavailable
	}
	var terr *timeoutError
	if errors.As(err, &terr) {
		return ErrUnavailable
	}
	var nerr net.Error
	if errors.As(err, &nerr) {
		return ErrUnavailable
	}
	if strings.HasPrefix(err.Error(), "tls: ") {
		// crypto/tls reports local handshake failures (no common cipher,
		// bad server certificate key usage...) as plain errors.
		return ErrTLS
	}
	return ErrProtocol
}

// timeoutError is our own per-step timeout firing. It deliberately does not
// wrap context.DeadlineExceeded: the caller's deadline and a KMS that does
// not answer are different things to the keyring.
type timeoutError struct{ d time.Duration }

func (e *timeoutError) Error() string   { return fmt.Sprintf("no answer within %v", e.d) }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// ownTimeout replaces a deadline error caused by our per-step timeout (the
// caller's ctx is still live) with a timeoutError.
func ownTimeout(parent context.Context, err error, d time.Duration) error {
	if parent.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return &timeoutError{d}
	}
	return err
}

// endpointErrors lists what each endpoint answered during one failover pass.
type endpointErrors []error

func (m endpointErrors) Error() string {
	parts := make([]string, len(m))
	for i, e := range m {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (m endpointErrors) Unwrap() []error { return m }

// endpointError names the endpoint an underlying error came from and the
// sentinel it was classified as.
type endpointError struct {
	addr string
	kind error // one of the sentinels
	err  error
}

func (e *endpointError) Error() string { return e.addr + ": " + e.err.Error() }
func (e *endpointError) Unwrap() error { return e.err }
