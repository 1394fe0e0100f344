package kmipclient_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cryptds/cryptds/kmipclient"
)

// serve accepts connections on ln until the test ends and hands each to fn.
func serve(t *testing.T, ln net.Listener, fn func(net.Conn)) string {
	t.Helper()
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go fn(c)
		}
	}()
	return ln.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// wrongCAServer is a TLS server whose certificate no CA of the client
// signed.
func wrongCAServer(t *testing.T) string {
	t.Helper()
	ca, caKey := newCA(t)
	cert := issue(t, ca, caKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "impostor"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, ln, func(c net.Conn) { _, _ = io.Copy(io.Discard, c); _ = c.Close() })
}

// TestUnreachableKinds: however the key server fails to answer (nothing
// listening, a listener that hangs up at once, one that never answers, a
// TLS server signed by another CA, a name that does not resolve), every
// operation fails with ErrUnreachable and names the endpoint tried, so the
// layers above map all of them to ENOKEY and exit code 4.
func TestUnreachableKinds(t *testing.T) {
	creds := newStallServer(t, 0) // only for its CA and client certificate
	cases := []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"connection refused", func(t *testing.T) string { return deadAddr(t) }},
		{"closed at once (EOF)", func(t *testing.T) string {
			return serve(t, listen(t), func(c net.Conn) { _ = c.Close() })
		}},
		{"never answers (timeout)", func(t *testing.T) string {
			// Reads what the client sends, answers nothing, until the
			// client gives up and hangs up.
			return serve(t, listen(t), func(c net.Conn) { _, _ = io.Copy(io.Discard, c); _ = c.Close() })
		}},
		{"TLS: server signed by another CA", wrongCAServer},
		{"unknown host", func(*testing.T) string { return "no-such-kms.invalid:5696" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := c.addr(t)
			cfg := kmipclient.Config{
				Endpoints: []string{addr}, CAFile: creds.ca, CertFile: creds.cert, KeyFile: creds.key,
				Timeout: 200 * time.Millisecond, Retries: -1, Logger: quiet(),
			}
			_, err := kmipclient.New(ctxT(t), cfg)
			check(t, "New", addr, err)
			cfg.Lazy = true
			cl := newClient(t, cfg)
			_, err = cl.GetKey(ctxT(t), "1")
			check(t, "GetKey", addr, err)
			_, err = cl.CreateKEK(ctxT(t), "cryptds/test")
			check(t, "CreateKEK", addr, err)
			_, err = cl.State(ctxT(t), "1")
			check(t, "State", addr, err)
		})
	}
}

func check(t *testing.T, op, addr string, err error) {
	t.Helper()
	if !errors.Is(err, kmipclient.ErrUnreachable) {
		t.Errorf("%s: %v is not ErrUnreachable", op, err)
		return
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("%s: %q does not name the endpoint %s", op, err, addr)
	}
}

// TestServerRefusalIsNotUnreachable: an answer from the server (key not
// found, permission denied, a malformed request) is not "unreachable".
func TestServerRefusalIsNotUnreachable(t *testing.T) {
	for _, s := range []error{kmipclient.ErrNotFound, kmipclient.ErrPermission, kmipclient.ErrNotUsable, kmipclient.ErrProtocol} {
		if errors.Is(&kmipclient.Error{Op: "Get", Endpoint: "kms:5696", Err: s}, kmipclient.ErrUnreachable) {
			t.Errorf("%v matches ErrUnreachable", s)
		}
	}
}

// TestStateAtNamesServingEndpoint: StateAt says which cluster member
// answered (after failover past a dead one), and a key's lifecycle.
func TestStateAtNamesServingEndpoint(t *testing.T) {
	f := newDevKMS(t)
	dead := deadAddr(t)
	cl := newClient(t, f.config(dead, f.addr))
	id, err := cl.CreateKEK(ctxT(t), uniqueName(t))
	if err != nil {
		t.Fatal(err)
	}
	st, ep, err := cl.StateAt(ctxT(t), id)
	if err != nil || st != kmipclient.StateActive || ep != f.addr {
		t.Fatalf("StateAt = %v, %q, %v; want Active at %s", st, ep, err, f.addr)
	}
	if err := cl.Revoke(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	if st, _, err := cl.StateAt(ctxT(t), id); err != nil || st != kmipclient.StateDeactivated {
		t.Fatalf("after Revoke: %v, %v; want Deactivated", st, err)
	}
}
