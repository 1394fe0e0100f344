package kmipclient_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ovh/kmip-go"

	"github.com/cryptds/cryptds/devkms"
	"github.com/cryptds/cryptds/kmipclient"
)

func TestMain(m *testing.M) {
	// ovh's kmipserver logs every connection through slog.Default and has
	// no logger option; keep test output to what the tests say.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// newDevKMS runs the in-process dev KMS as a suite fixture.
func newDevKMS(t testing.TB) *fixture {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "kms")
	creds := t.TempDir()
	srv, err := devkms.New(devkms.Config{StateDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("devkms.New: %v", err)
	}
	f := &fixture{name: "dev KMS", addr: srv.Addr()}
	f.ca, f.cert, f.key = srv.ClientCredentials()
	f.otherCert, f.otherKey = filepath.Join(creds, "other.crt"), filepath.Join(creds, "other.key")
	if err := srv.IssueClientCert("cryptds-other", f.otherCert, f.otherKey); err != nil {
		t.Fatalf("IssueClientCert: %v", err)
	}
	f.untrustedCert, f.untrustedKey = writeUntrustedClient(t, creds)
	running := true
	f.stop = func(t testing.TB) {
		t.Helper()
		if err := srv.Close(); err != nil {
			t.Fatalf("stop dev KMS: %v", err)
		}
		running = false
	}
	f.start = func(t testing.TB) {
		t.Helper()
		s, err := devkms.New(devkms.Config{StateDir: dir, Listen: f.addr})
		if err != nil {
			t.Fatalf("restart dev KMS: %v", err)
		}
		srv, running = s, true
	}
	t.Cleanup(func() {
		if running {
			_ = srv.Close()
		}
	})
	return f
}

func TestSuiteDevKMS(t *testing.T) {
	runSuite(t, newDevKMS(t))
}

func BenchmarkGetDevKMS(b *testing.B) {
	benchmarkGet(b, newDevKMS(b))
}

// TestNegotiation runs a key's whole life at each version a server may
// settle on, down to the 1.1 floor, and refuses a KMIP 1.0-only server.
func TestNegotiation(t *testing.T) {
	tests := []struct {
		server []kmip.ProtocolVersion
		want   kmipclient.Version
		ok     bool
	}{
		{[]kmip.ProtocolVersion{kmip.V1_4, kmip.V1_3}, kmipclient.Version{Major: 1, Minor: 4}, true},
		{[]kmip.ProtocolVersion{kmip.V1_3, kmip.V1_2}, kmipclient.Version{Major: 1, Minor: 3}, true},
		{[]kmip.ProtocolVersion{kmip.V1_2}, kmipclient.Version{Major: 1, Minor: 2}, true},
		{[]kmip.ProtocolVersion{kmip.V1_1, kmip.V1_0}, kmipclient.Version{Major: 1, Minor: 1}, true},
		{[]kmip.ProtocolVersion{kmip.V1_0}, kmipclient.Version{}, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.server), func(t *testing.T) {
			srv, err := devkms.New(devkms.Config{StateDir: filepath.Join(t.TempDir(), "kms"), Listen: "127.0.0.1:0", Versions: tc.server})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = srv.Close() })
			ca, cert, key := srv.ClientCredentials()
			cfg := kmipclient.Config{Endpoints: []string{srv.Addr()}, CAFile: ca, CertFile: cert, KeyFile: key, Logger: quiet()}
			ctx := ctxT(t)
			c, err := kmipclient.New(ctx, cfg)
			if !tc.ok {
				wantErr(t, err, kmipclient.ErrProtocol, "New(KMIP 1.0 server)")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if v, err := c.Ping(ctx); err != nil || v != tc.want {
				t.Fatalf("Ping = %v, %v; want %v", v, err, tc.want)
			}
			name := uniqueName(t)
			id, err := c.CreateKEK(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetKey(ctx, id); err != nil {
				t.Fatal(err)
			}
			if ids, err := c.Locate(ctx, name); err != nil || len(ids) != 1 {
				t.Fatalf("Locate = %v, %v", ids, err)
			}
			if err := c.Revoke(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := c.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		})
	}
}
