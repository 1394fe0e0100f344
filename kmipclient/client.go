package kmipclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
)

// Client is a KMIP client for a KMS cluster, safe for concurrent use. A
// KMIP connection carries one request at a time, so it keeps a pool of up
// to MaxConns TLS connections to let parallel key fetches overlap, and dials
// new ones with ordered failover.
type Client struct {
	s   *settings
	eps []*endpoint

	slots chan struct{} // one token per open connection
	mu    sync.Mutex    // guards closed and pushes to idle
	idle  chan *conn
	done  chan struct{} // closed by Close

	closed bool
}

// New checks the configuration, loads the certificates and, unless
// cfg.Lazy, connects once so that a wrong CA, an unknown client certificate
// or an unreachable cluster is reported at startup rather than at the first
// key fetch.
func New(ctx context.Context, cfg Config) (*Client, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	c := &Client{
		s:     s,
		slots: make(chan struct{}, s.maxConns),
		idle:  make(chan *conn, s.maxConns),
		done:  make(chan struct{}),
	}
	for _, addr := range s.endpoints {
		host, _, _ := net.SplitHostPort(addr)
		c.eps = append(c.eps, &endpoint{addr: addr, serverName: host})
	}
	if s.lazy {
		return c, nil
	}
	cn, err := c.acquire(ctx, "Connect")
	if err != nil {
		return nil, err
	}
	s.log.Info("kmip connected", "endpoint", cn.ep.addr, "version", cn.version.String())
	c.release(cn, true)
	return c, nil
}

// Endpoints returns the configured endpoints, normalised to host:port, in
// failover order; the keyring names them when a key cannot be fetched.
func (c *Client) Endpoints() []string { return slices.Clone(c.s.endpoints) }

// Close closes every idle connection; connections in use are closed when
// their request finishes. Later calls fail with ErrUnavailable.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	for {
		select {
		case cn := <-c.idle:
			c.discard(cn)
		default:
			return nil
		}
	}
}

func (c *Client) allEndpoints() string { return strings.Join(c.s.endpoints, ",") }

// acquire returns a live pooled connection or dials a new one.
func (c *Client) acquire(ctx context.Context, op string) (*conn, error) {
	for {
		// Prefer an idle connection; drop the ones that died while idle
		// (the server restarted or closed them).
		select {
		case cn := <-c.idle:
			if cn.alive() {
				return cn, nil
			}
			c.discard(cn)
			continue
		default:
		}
		select {
		case <-c.done:
			return nil, &Error{Op: op, Endpoint: c.allEndpoints(), Err: ErrUnavailable, Cause: errors.New("client closed")}
		case <-ctx.Done():
			return nil, &Error{Op: op, Endpoint: c.allEndpoints(), Err: ErrUnavailable, Cause: ctx.Err()}
		case cn := <-c.idle:
			if cn.alive() {
				return cn, nil
			}
			c.discard(cn)
		case c.slots <- struct{}{}:
			cn, err := c.dial(ctx, op)
			if err != nil {
				<-c.slots
				return nil, err
			}
			return cn, nil
		}
	}
}

// release returns a healthy connection to the pool and closes any other.
func (c *Client) release(cn *conn, healthy bool) {
	if healthy {
		c.mu.Lock()
		if !c.closed {
			select {
			case c.idle <- cn:
				c.mu.Unlock()
				return
			default:
			}
		}
		c.mu.Unlock()
	}
	c.discard(cn)
}

func (c *Client) discard(cn *conn) {
	cn.close()
	<-c.slots
}

// dial walks the endpoints in order, healthy ones first, and returns the
// first connection that completes TLS and version negotiation.
func (c *Client) dial(ctx context.Context, op string) (*conn, error) {
	now := time.Now()
	order := make([]*endpoint, 0, len(c.eps))
	var down []*endpoint
	for _, ep := range c.eps {
		if ep.isDown(now) {
			down = append(down, ep)
		} else {
			order = append(order, ep)
		}
	}
	order = append(order, down...)

	var errs endpointErrors
	var tried []string
	for _, ep := range order {
		if ctx.Err() != nil {
			break
		}
		cn, err := c.dialEndpoint(ctx, ep)
		if err == nil {
			ep.markUp()
			if len(errs) > 0 {
				c.s.log.Warn("kmip failover", "endpoint", ep.addr, "failed", errs.Error())
			}
			c.s.log.Debug("kmip connection opened", "endpoint", ep.addr, "version", cn.version.String())
			return cn, nil
		}
		ep.markDown(time.Now())
		c.s.log.Debug("kmip endpoint failed", "endpoint", ep.addr, "err", err)
		errs = append(errs, err)
		tried = append(tried, ep.addr)
	}
	if len(errs) == 0 {
		return nil, &Error{Op: op, Endpoint: c.allEndpoints(), Err: ErrUnavailable, Cause: ctx.Err()}
	}
	// A certificate or protocol problem outranks an unreachable member:
	// retrying will not fix it, and it is what the operator must see.
	e := &Error{Op: op, Endpoint: strings.Join(tried, ","), Err: ErrUnavailable, Cause: errs}
	for _, kind := range []error{ErrTLS, ErrProtocol} {
		for _, err := range errs {
			var ee *endpointError
			if errors.As(err, &ee) && ee.kind == kind {
				e.Err, e.Endpoint = kind, ee.addr
				return nil, e
			}
		}
	}
	if len(errs) == 1 {
		var ee *endpointError
		if errors.As(errs[0], &ee) {
			e.Cause = ee.err
		}
	}
	return nil, e
}

// result is the outcome of one request message.
type result struct {
	items    []kmip.ResponseBatchItem
	endpoint string
	version  Version
	// resent is set when an earlier attempt may have reached the server
	// before its connection failed, so "already done" answers (revoking a
	// revoked key) may be our own first attempt's doing.
	resent bool
}

// call sends payloads as one request message and returns the batch items in
// order. idempotent says whether the request may be sent again after it may
// have reached the server. KMIP failures are left in the items; only
// transport and decoding failures are returned as errors.
func (c *Client) call(ctx context.Context, op string, idempotent bool, payloads ...kmip.OperationPayload) (*result, error) {
	res, cn, err := c.callHold(ctx, op, idempotent, payloads...)
	if cn != nil {
		c.release(cn, true)
	}
	return res, err
}

// callHold is call that keeps the connection on success, for a follow-up
// request that must reach the same server; the caller releases it.
func (c *Client) callHold(ctx context.Context, op string, idempotent bool, payloads ...kmip.OperationPayload) (*result, *conn, error) {
	var (
		res      result
		lastErr  error
		attempts int
		// A connection that died before we wrote to it (typically an idle
		// one the server closed a moment ago) costs no attempt: the
		// request never left this host.
		freeRetries = c.s.maxConns + 1
	)
	for {
		if attempts > 0 {
			if err := sleepCtx(ctx, backoff(attempts)); err != nil {
				return nil, nil, lastErr
			}
		}
		cn, err := c.acquire(ctx, op)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Err != ErrUnavailable || attempts >= c.s.retries || ctx.Err() != nil {
				return nil, nil, err
			}
			lastErr = err
			attempts++
			continue
		}
		t0 := time.Now()
		items, sent, err := c.exchange(ctx, cn, payloads)
		if c.s.observe != nil {
			c.s.observe(op, cn.ep.addr, time.Since(t0), err)
		}
		if err == nil {
			res.items, res.endpoint, res.version = items, cn.ep.addr, cn.version
			return &res, cn, nil
		}
		c.release(cn, false) // never reuse a connection after a transport error
		kind := classifyTransport(err)
		if kind == ErrUnavailable {
			cn.ep.markDown(time.Now())
		}
		e := &Error{Op: op, Endpoint: cn.ep.addr, Err: kind, Cause: err}
		c.s.log.Debug("kmip request failed", "op", op, "endpoint", cn.ep.addr, "sent", sent, "err", err)
		if kind != ErrUnavailable || ctx.Err() != nil {
			return nil, nil, e
		}
		if sent && !idempotent {
			e.Cause = fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
			return nil, nil, e
		}
		lastErr = e
		if !sent && freeRetries > 0 {
			freeRetries--
			continue
		}
		if attempts >= c.s.retries {
			return nil, nil, e
		}
		res.resent = res.resent || sent
		attempts++
	}
}

// exchange does one round trip on cn. sent reports whether any byte of the
// request may have reached the server.
func (c *Client) exchange(ctx context.Context, cn *conn, payloads []kmip.OperationPayload) (items []kmip.ResponseBatchItem, sent bool, err error) {
	msg := kmip.NewRequestMessage(kmip.ProtocolVersion{
		ProtocolVersionMajor: int32(cn.version.Major), ProtocolVersionMinor: int32(cn.version.Minor)}, payloads...)
	if len(payloads) > 1 {
		// Later items depend on earlier ones: do not run them after a failure.
		msg.Header.BatchErrorContinuationOption = kmip.BatchErrorContinuationOptionStop
	}
	resp, sent, err := cn.roundtrip(ctx, c.s.timeout, &msg)
	if err != nil {
		return nil, sent, err
	}
	// With "stop", PyKMIP omits the items after a failure: accept fewer,
	// never more, and never none.
	if len(resp.BatchItem) == 0 || len(resp.BatchItem) > len(payloads) {
		return nil, sent, fmt.Errorf("%d batch items in reply to %d", len(resp.BatchItem), len(payloads))
	}
	return resp.BatchItem, sent, nil
}

// backoff is exponential with jitter, so hosts retrying after a KMS blip do
// not return in lockstep.
func backoff(attempt int) time.Duration {
	d := backoffMax
	if attempt < 16 { // larger shifts would overflow
		d = min(backoffBase<<(attempt-1), backoffMax)
	}
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
