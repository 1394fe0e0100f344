package kmipclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// The library's client (ovh/kmip-go/kmipclient) is deliberately not used
// for the transport: it re-dials and re-sends on EOF by itself (a duplicated
// Create), its Close dereferences a nil connection after a failed re-dial,
// and its reader can close the send channel under a concurrent send. One
// request at a time on a connection we own, with the library's TTLV codec
// and message types, is simpler and lets us know exactly whether a request
// left this host.

// endpoint is one KMS cluster member and what we learned about it.
type endpoint struct {
	addr       string // host:port
	serverName string // host, checked against the certificate's SANs

	mu        sync.Mutex
	downUntil time.Time // failed recently: try after the healthy ones
}

func (ep *endpoint) markDown(now time.Time) {
	ep.mu.Lock()
	ep.downUntil = now.Add(downFor)
	ep.mu.Unlock()
}

func (ep *endpoint) markUp() {
	ep.mu.Lock()
	ep.downUntil = time.Time{}
	ep.mu.Unlock()
}

func (ep *endpoint) isDown(now time.Time) bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return now.Before(ep.downUntil)
}

// countingConn counts bytes the kernel accepted, under TLS: zero means a
// request never left this host, so even a Create may be sent elsewhere.
type countingConn struct {
	net.Conn
	written atomic.Uint64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(uint64(n))
	return n, err
}

// conn is one pooled connection to one endpoint, used by one request at a
// time (the pool hands it out exclusively).
type conn struct {
	ep      *endpoint
	raw     *countingConn
	tls     *tls.Conn
	stream  ttlv.Stream
	version Version
}

func (cn *conn) close() { _ = cn.tls.Close() }

// alive checks, without blocking, that the server has not closed an idle
// connection (restart, idle timeout): a read with an expired deadline
// returns a timeout if nothing is pending, EOF or a reset if it is gone.
// A read timeout does not break a tls.Conn.
func (cn *conn) alive() bool {
	if err := cn.tls.SetReadDeadline(time.Now()); err != nil {
		return false
	}
	var b [1]byte
	n, err := cn.tls.Read(b[:])
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false // gone, or unsolicited data: either way unusable
	}
	return cn.tls.SetReadDeadline(time.Time{}) == nil
}

// longAgo is a deadline in the past, to interrupt blocked I/O.
var longAgo = time.Unix(1, 0)

// roundtrip sends msg and reads the reply, bounded by ctx and timeout.
// sent reports whether any byte of the request reached the kernel.
func (cn *conn) roundtrip(ctx context.Context, timeout time.Duration, msg *kmip.RequestMessage) (resp *kmip.ResponseMessage, sent bool, err error) {
	deadline := time.Now().Add(timeout)
	callerDeadline := false
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline, callerDeadline = dl, true
	}
	if err := cn.tls.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	// Cancellation interrupts blocked reads and writes.
	stop := context.AfterFunc(ctx, func() { _ = cn.tls.SetDeadline(longAgo) })
	defer stop()
	before := cn.raw.written.Load()
	err = cn.stream.Send(msg)
	sent = cn.raw.written.Load() != before
	if err == nil {
		resp = new(kmip.ResponseMessage)
		err = cn.stream.Recv(resp)
	}
	if err != nil {
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded) && callerDeadline:
			err = context.DeadlineExceeded
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = &timeoutError{timeout}
		}
		return nil, sent, err
	}
	return resp, sent, cn.tls.SetDeadline(time.Time{})
}

// dialEndpoint opens one TLS connection to ep and negotiates the KMIP
// version on it. A failure is an *endpointError carrying its sentinel.
func (c *Client) dialEndpoint(parent context.Context, ep *endpoint) (*conn, error) {
	t0 := time.Now()
	fail := func(err error) (*conn, error) {
		err = ownTimeout(parent, err, c.s.timeout)
		if c.s.observe != nil {
			c.s.observe("dial", ep.addr, time.Since(t0), err)
		}
		return nil, &endpointError{addr: ep.addr, kind: classifyTransport(err), err: err}
	}
	ctx, cancel := context.WithTimeout(parent, c.s.timeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	tcp, err := d.DialContext(ctx, "tcp", ep.addr)
	if err != nil {
		return fail(err)
	}
	raw := &countingConn{Conn: tcp}
	cfg := c.s.tls.Clone()
	cfg.ServerName = ep.serverName
	tlsConn := tls.Client(raw, cfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		_ = tcp.Close()
		return fail(err)
	}
	cn := &conn{ep: ep, raw: raw, tls: tlsConn, stream: ttlv.NewStream(tlsConn, ttlv.DefaultMaxMessageSize)}
	v, err := cn.negotiate(ctx, c.s.timeout)
	if err != nil {
		cn.close()
		var ke *Error
		if errors.As(err, &ke) { // the server answered DiscoverVersions with a failure
			return nil, &endpointError{addr: ep.addr, kind: ke.Err, err: err}
		}
		var verr *versionError
		if errors.As(err, &verr) {
			return nil, &endpointError{addr: ep.addr, kind: ErrProtocol, err: err}
		}
		return fail(err)
	}
	cn.version = v
	return cn, nil
}

// negotiate runs DiscoverVersions (sent as KMIP 1.1, which every server we
// accept understands) and returns the server's preferred version among
// those offered.
func (cn *conn) negotiate(ctx context.Context, timeout time.Duration) (Version, error) {
	offered := offeredVersions()
	req := kmip.NewRequestMessage(kmip.V1_1, &payloads.DiscoverVersionsRequestPayload{ProtocolVersion: offered})
	resp, _, err := cn.roundtrip(ctx, timeout, &req)
	if err != nil {
		// With TLS 1.3 the server checks our certificate after our side of
		// the handshake has completed: its alert can be lost in a reset,
		// and a server that drops a fresh connection before the first
		// reply is rejecting us.
		if cn.tls.ConnectionState().Version == tls.VersionTLS13 &&
			(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
				errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
			return Version{}, &rejectedError{err}
		}
		return Version{}, err
	}
	if len(resp.BatchItem) != 1 {
		return Version{}, fmt.Errorf("DiscoverVersions: %d batch items in reply", len(resp.BatchItem))
	}
	bi := &resp.BatchItem[0]
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		if bi.ResultReason == kmip.ResultReasonOperationNotSupported {
			// A KMIP 1.0 server: it has no DiscoverVersions.
			return Version{}, &versionError{Version{1, 0}}
		}
		return Version{}, reasonError("DiscoverVersions", cn.ep.addr, bi)
	}
	pl, ok := bi.ResponsePayload.(*payloads.DiscoverVersionsResponsePayload)
	if !ok {
		return Version{}, fmt.Errorf("DiscoverVersions: reply payload is %T", bi.ResponsePayload)
	}
	for _, v := range pl.ProtocolVersion {
		if slices.Contains(offered, v) {
			return versionOf(v), nil
		}
	}
	return Version{}, &versionError{}
}

// versionError: the server speaks no version we offer.
type versionError struct{ v Version }

func (e *versionError) Error() string {
	if e.v == (Version{}) {
		return "no common KMIP version (client offers " + minVersion.String() + " to " + maxVersion.String() + ")"
	}
	return "server speaks KMIP " + e.v.String() + ", below the " + minVersion.String() + " floor"
}

// rejectedError is a connection the server dropped right after a TLS 1.3
// handshake; it is classified as ErrTLS.
type rejectedError struct{ err error }

func (e *rejectedError) Error() string {
	return "server closed the connection after the TLS handshake (client certificate rejected?): " + e.err.Error()
}

func (e *rejectedError) Unwrap() error { return e.err }
