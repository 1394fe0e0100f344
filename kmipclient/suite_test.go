package kmipclient_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cryptds/cryptds/kmipclient"
)

// fixture is what the shared suite needs from a KMIP server under test: the
// dev KMS in unit tests, PyKMIP in integration tests.
type fixture struct {
	name string
	addr string
	// Trusted client (the key owner) and a second trusted client with a
	// different CN (another owner).
	ca, cert, key       string
	otherCert, otherKey string
	// A client certificate signed by a CA the server does not trust.
	untrustedCert, untrustedKey string
	// stop and start take the server down and bring it back on the same
	// address with the same keys.
	stop, start func(t testing.TB)
}

// quiet is the logger for clients under test: tests stay readable and keys
// could not leak into output anyway.
func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (f *fixture) config(endpoints ...string) kmipclient.Config {
	if len(endpoints) == 0 {
		endpoints = []string{f.addr}
	}
	return kmipclient.Config{
		Endpoints: endpoints,
		CAFile:    f.ca, CertFile: f.cert, KeyFile: f.key,
		Timeout: 5 * time.Second,
		Logger:  quiet(),
	}
}

func newClient(t testing.TB, cfg kmipclient.Config) *kmipclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kmipclient.New(ctx, cfg)
	if err != nil {
		t.Fatalf("kmipclient.New(%v): %v", cfg.Endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// uniqueName keeps runs apart on a server whose database outlives the test.
func uniqueName(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "cryptds-test/" + strings.ReplaceAll(t.Name(), "/", "-") + "/" + hex.EncodeToString(b[:])
}

// wantErr checks err wraps sentinel and is an *Error naming an endpoint.
func wantErr(t testing.TB, err error, sentinel error, op string) *kmipclient.Error {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got %v, want %v", op, err, sentinel)
	}
	var ke *kmipclient.Error
	if !errors.As(err, &ke) {
		t.Fatalf("%s: %v is not a *kmipclient.Error", op, err)
	}
	if ke.Endpoint == "" || ke.Op == "" {
		t.Fatalf("%s: error without op or endpoint: %#v", op, ke)
	}
	return ke
}

// shred revokes and destroys id, tolerating a key already gone.
func shred(t testing.TB, c *kmipclient.Client, id string) {
	t.Helper()
	ctx := ctxT(t)
	if err := c.Revoke(ctx, id); err != nil && !errors.Is(err, kmipclient.ErrNotUsable) && !errors.Is(err, kmipclient.ErrNotFound) {
		t.Errorf("cleanup revoke %s: %v", id, err)
	}
	if err := c.Destroy(ctx, id); err != nil && !errors.Is(err, kmipclient.ErrNotFound) {
		t.Errorf("cleanup destroy %s: %v", id, err)
	}
}

// runSuite is the client conformance suite, the same for every server.
func runSuite(t *testing.T, f *fixture) {
	t.Run("Ping", func(t *testing.T) {
		c := newClient(t, f.config())
		v, err := c.Ping(ctxT(t))
		if err != nil {
			t.Fatalf("Ping: %v", err)
		}
		if oldest, newest := kmipclient.VersionRange(); v.Less(oldest) || newest.Less(v) {
			t.Fatalf("negotiated KMIP %s, outside %s..%s", v, oldest, newest)
		}
		t.Logf("%s: negotiated KMIP %s", f.name, v)
	})

	t.Run("Lifecycle", func(t *testing.T) {
		c := newClient(t, f.config())
		ctx := ctxT(t)
		name := uniqueName(t)
		id, err := c.CreateKEK(ctx, name)
		if err != nil {
			t.Fatalf("CreateKEK: %v", err)
		}
		key, err := c.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("GetKey: %v", err)
		}
		if len(key) != kmipclient.KEKSize || bytes.Equal(key, make([]byte, kmipclient.KEKSize)) {
			t.Fatalf("GetKey: got %d bytes (all zero: %v)", len(key), bytes.Equal(key, make([]byte, len(key))))
		}
		again, err := c.GetKey(ctx, id)
		if err != nil || !bytes.Equal(again, key) {
			t.Fatalf("second GetKey: same key %v, err %v", bytes.Equal(again, key), err)
		}
		ids, err := c.Locate(ctx, name)
		if err != nil || len(ids) != 1 || ids[0] != id {
			t.Fatalf("Locate(%q) = %v, %v; want [%s]", name, ids, err, id)
		}
		if st, err := c.State(ctx, id); err != nil || st != kmipclient.StateActive {
			t.Fatalf("State = %v, %v; want Active", st, err)
		}
		// An Active key cannot be destroyed: revoke first.
		wantErr(t, c.Destroy(ctx, id), kmipclient.ErrPermission, "Destroy(active)")
		if err := c.Revoke(ctx, id); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		if st, err := c.State(ctx, id); err != nil || st != kmipclient.StateDeactivated {
			t.Fatalf("State after revoke = %v, %v; want Deactivated", st, err)
		}
		_, err = c.GetKey(ctx, id)
		wantErr(t, err, kmipclient.ErrNotUsable, "GetKey(revoked)")
		wantErr(t, c.Revoke(ctx, id), kmipclient.ErrNotUsable, "Revoke(revoked)")
		if err := c.Destroy(ctx, id); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		_, err = c.GetKey(ctx, id)
		ke := wantErr(t, err, kmipclient.ErrNotFound, "GetKey(destroyed)")
		if ke.Reason != "ItemNotFound" || ke.Endpoint != f.addr {
			t.Errorf("GetKey(destroyed): reason %q endpoint %q, want ItemNotFound at %s", ke.Reason, ke.Endpoint, f.addr)
		}
		_, err = c.State(ctx, id)
		wantErr(t, err, kmipclient.ErrNotFound, "State(destroyed)")
		if ids, err := c.Locate(ctx, name); err != nil || len(ids) != 0 {
			t.Fatalf("Locate after destroy = %v, %v; want none", ids, err)
		}
		// The key never shows up in an error.
		for _, e := range []error{err, c.Destroy(ctx, id)} {
			if e != nil && (strings.Contains(e.Error(), hex.EncodeToString(key)) || strings.Contains(e.Error(), string(key))) {
				t.Fatalf("error leaks key material: %v", e)
			}
		}
	})

	t.Run("UnknownID", func(t *testing.T) {
		c := newClient(t, f.config())
		ctx := ctxT(t)
		for _, id := range []string{"999999999", "no-such-key"} {
			_, err := c.GetKey(ctx, id)
			wantErr(t, err, kmipclient.ErrNotFound, "GetKey("+id+")")
			_, err = c.State(ctx, id)
			wantErr(t, err, kmipclient.ErrNotFound, "State("+id+")")
			wantErr(t, c.Revoke(ctx, id), kmipclient.ErrNotFound, "Revoke("+id+")")
		}
		if ids, err := c.Locate(ctx, uniqueName(t)); err != nil || len(ids) != 0 {
			t.Fatalf("Locate(unknown) = %v, %v; want none", ids, err)
		}
	})

	t.Run("OtherOwner", func(t *testing.T) {
		owner := newClient(t, f.config())
		cfg := f.config()
		cfg.CertFile, cfg.KeyFile = f.otherCert, f.otherKey
		other := newClient(t, cfg)
		ctx := ctxT(t)
		name := uniqueName(t)
		id, err := owner.CreateKEK(ctx, name)
		if err != nil {
			t.Fatalf("CreateKEK: %v", err)
		}
		t.Cleanup(func() { shred(t, owner, id) })
		_, err = other.GetKey(ctx, id)
		wantErr(t, err, kmipclient.ErrPermission, "GetKey(other owner)")
		wantErr(t, other.Revoke(ctx, id), kmipclient.ErrPermission, "Revoke(other owner)")
		if ids, err := other.Locate(ctx, name); err != nil || len(ids) != 0 {
			t.Fatalf("Locate by another owner = %v, %v; want none", ids, err)
		}
		if _, err := owner.GetKey(ctx, id); err != nil {
			t.Fatalf("owner GetKey: %v", err)
		}
	})

	t.Run("UntrustedClientCert", func(t *testing.T) {
		cfg := f.config()
		cfg.CertFile, cfg.KeyFile = f.untrustedCert, f.untrustedKey
		_, err := kmipclient.New(ctxT(t), cfg)
		ke := wantErr(t, err, kmipclient.ErrTLS, "New(untrusted cert)")
		if ke.Endpoint != f.addr {
			t.Errorf("endpoint %q, want %q", ke.Endpoint, f.addr)
		}
	})

	t.Run("UntrustedServer", func(t *testing.T) {
		cfg := f.config()
		cfg.CAFile = f.untrustedCert // a certificate that did not sign the server's
		_, err := kmipclient.New(ctxT(t), cfg)
		wantErr(t, err, kmipclient.ErrTLS, "New(wrong CA)")
	})

	t.Run("Failover", func(t *testing.T) {
		dead := deadAddr(t)
		c := newClient(t, f.config(dead, f.addr))
		ctx := ctxT(t)
		id, err := c.CreateKEK(ctx, uniqueName(t))
		if err != nil {
			t.Fatalf("CreateKEK through failover: %v", err)
		}
		t.Cleanup(func() { shred(t, c, id) })
		if _, err := c.GetKey(ctx, id); err != nil {
			t.Fatalf("GetKey through failover: %v", err)
		}
		if got := c.Endpoints(); len(got) != 2 || got[0] != dead || got[1] != f.addr {
			t.Fatalf("Endpoints() = %v", got)
		}
		// Every endpoint dead: ErrUnavailable naming all of them.
		lazy := f.config(dead, deadAddr(t))
		lazy.Lazy, lazy.Retries = true, -1
		lc := newClient(t, lazy)
		_, err = lc.GetKey(ctx, id)
		ke := wantErr(t, err, kmipclient.ErrUnavailable, "GetKey(all dead)")
		if !strings.Contains(ke.Endpoint, dead) || !strings.Contains(err.Error(), lazy.Endpoints[1]) {
			t.Errorf("error does not name every endpoint: %v", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		c := newClient(t, f.config())
		ctx := ctxT(t)
		id, err := c.CreateKEK(ctx, uniqueName(t))
		if err != nil {
			t.Fatalf("CreateKEK: %v", err)
		}
		t.Cleanup(func() { shred(t, c, id) })
		want, err := c.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("GetKey: %v", err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() {
				got, err := c.GetKey(ctx, id)
				if err == nil && !bytes.Equal(got, want) {
					err = errors.New("different key bytes")
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("concurrent GetKey: %v", err)
			}
		}
	})

	// Last: it restarts the server.
	t.Run("ServerRestart", func(t *testing.T) {
		cfg := f.config()
		cfg.Timeout = 3 * time.Second
		c := newClient(t, cfg)
		ctx := ctxT(t)
		id, err := c.CreateKEK(ctx, uniqueName(t))
		if err != nil {
			t.Fatalf("CreateKEK: %v", err)
		}
		want, err := c.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("GetKey: %v", err)
		}
		f.stop(t)
		_, err = c.GetKey(ctx, id)
		ke := wantErr(t, err, kmipclient.ErrUnavailable, "GetKey(server down)")
		if ke.Endpoint != f.addr || !strings.Contains(err.Error(), f.addr) {
			t.Errorf("error does not name the endpoint %s: %v", f.addr, err)
		}
		_, err = c.CreateKEK(ctx, uniqueName(t))
		wantErr(t, err, kmipclient.ErrUnavailable, "CreateKEK(server down)")
		if errors.Is(err, kmipclient.ErrOutcomeUnknown) {
			t.Errorf("CreateKEK never reached the server, yet: %v", err)
		}
		f.start(t)
		// The same client recovers: no restart, no new configuration.
		got, err := c.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("GetKey after restart: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("key changed across the server restart")
		}
		shred(t, c, id)
		// Pooled connections died with the old server: a Create must not be
		// reported "outcome unknown" for that, it never left this host.
		id2, err := c.CreateKEK(ctx, uniqueName(t))
		if err != nil {
			t.Fatalf("CreateKEK after restart: %v", err)
		}
		shred(t, c, id2)
	})
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// writeUntrustedClient makes a client certificate (CN "cryptds", EKU
// clientAuth) signed by a throw-away CA no server trusts.
func writeUntrustedClient(t testing.TB, dir string) (cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "untrusted CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "cryptds"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "untrusted.crt"), filepath.Join(dir, "untrusted.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// benchmarkGet measures one KMS Get (GetKey: Get plus the State, one round
// trip) on a warm pooled connection: what a keyring miss costs.
func benchmarkGet(b *testing.B, f *fixture) {
	c := newClient(b, f.config())
	ctx := ctxT(b)
	id, err := c.CreateKEK(ctx, uniqueName(b))
	if err != nil {
		b.Fatalf("CreateKEK: %v", err)
	}
	b.Cleanup(func() { shred(b, c, id) })
	if _, err := c.GetKey(ctx, id); err != nil {
		b.Fatalf("GetKey: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		key, err := c.GetKey(ctx, id)
		if err != nil {
			b.Fatalf("GetKey: %v", err)
		}
		clear(key)
	}
}
