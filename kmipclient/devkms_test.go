package kmipclient_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cryptds/cryptds/devkms"
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
