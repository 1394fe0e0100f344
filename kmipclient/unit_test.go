package kmipclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
)

func TestNormalizeEndpoint(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "kms.example:5697", want: "kms.example:5697"},
		{in: "kms.example", want: "kms.example:5696"},
		{in: "127.0.0.1", want: "127.0.0.1:5696"},
		{in: "[::1]:5696", want: "[::1]:5696"},
		{in: "[::1]", want: "[::1]:5696"},
		{in: "", bad: true},
		{in: ":5696", bad: true},
		{in: "host:0", bad: true},
		{in: "host:99999", bad: true},
		{in: "host:http", bad: true},
	}
	for _, tc := range tests {
		got, err := normalizeEndpoint(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("normalizeEndpoint(%q) = %q, %v; want %q (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	ca, cert, key := writeSelfSigned(t)
	base := Config{Endpoints: []string{"127.0.0.1"}, CAFile: ca, CertFile: cert, KeyFile: key}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
		check   func(*settings) error
	}{
		{name: "defaults", mod: func(*Config) {}, check: func(s *settings) error {
			if s.timeout != DefaultTimeout || s.retries != DefaultRetries || s.maxConns != DefaultMaxConns {
				return fmt.Errorf("got timeout %v retries %d maxConns %d", s.timeout, s.retries, s.maxConns)
			}
			if s.tls.MinVersion != tls.VersionTLS12 || len(s.tls.Certificates) != 1 {
				return errors.New("TLS config: want TLS 1.2 minimum and one client certificate")
			}
			if s.endpoints[0] != "127.0.0.1:5696" {
				return fmt.Errorf("endpoint %q", s.endpoints[0])
			}
			return nil
		}},
		{name: "no retries", mod: func(c *Config) { c.Retries = -1 }, check: func(s *settings) error {
			if s.retries != 0 {
				return fmt.Errorf("retries %d", s.retries)
			}
			return nil
		}},
		{name: "no endpoints", mod: func(c *Config) { c.Endpoints = nil }, wantErr: "no endpoints"},
		{name: "duplicate endpoint", mod: func(c *Config) { c.Endpoints = []string{"a", "a:5696"} }, wantErr: "twice"},
		{name: "negative timeout", mod: func(c *Config) { c.Timeout = -time.Second }, wantErr: "negative timeout"},
		{name: "negative conns", mod: func(c *Config) { c.MaxConns = -1 }, wantErr: "MaxConns"},
		{name: "no CA", mod: func(c *Config) { c.CAFile = "" }, wantErr: "mutual TLS"},
		{name: "no client cert", mod: func(c *Config) { c.CertFile = "" }, wantErr: "mutual TLS"},
		{name: "missing CA file", mod: func(c *Config) { c.CAFile = ca + ".missing" }, wantErr: "read CA bundle"},
		{name: "CA not PEM", mod: func(c *Config) { c.CAFile = key + ".txt" }, wantErr: "no PEM certificate"},
		{name: "key mismatch", mod: func(c *Config) { c.KeyFile = cert }, wantErr: "load client certificate"},
	}
	if err := os.WriteFile(key+".txt", []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mod(&cfg)
			s, err := cfg.settings()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSentinelForReason(t *testing.T) {
	tests := []struct {
		reason kmip.ResultReason
		want   error
	}{
		{kmip.ResultReasonItemNotFound, ErrNotFound},
		{kmip.ResultReasonPermissionDenied, ErrPermission},
		{kmip.ResultReasonIllegalOperation, ErrNotUsable},
		{kmip.ResultReasonObjectArchived, ErrNotUsable},
		{kmip.ResultReasonAuthenticationNotSuccessful, ErrTLS},
		{kmip.ResultReasonInvalidField, ErrProtocol},
		{kmip.ResultReasonOperationNotSupported, ErrProtocol},
		{kmip.ResultReasonGeneralFailure, ErrProtocol},
	}
	for _, tc := range tests {
		bi := &kmip.ResponseBatchItem{ResultStatus: kmip.ResultStatusOperationFailed, ResultReason: tc.reason, ResultMessage: "msg"}
		e := reasonError("Get", "kms:5696", bi)
		if !errors.Is(e, tc.want) || e.Endpoint != "kms:5696" || e.Op != "Get" || e.Reason == "" {
			t.Errorf("reason %v: got %#v, want %v", tc.reason, e, tc.want)
		}
	}
	long := &kmip.ResponseBatchItem{ResultStatus: kmip.ResultStatusOperationFailed, ResultReason: kmip.ResultReasonItemNotFound,
		ResultMessage: strings.Repeat("x", 1000)}
	if msg := reasonError("Get", "kms", long).Error(); len(msg) > 400 {
		t.Errorf("server message not capped: %d bytes", len(msg))
	}
	pending := &kmip.ResponseBatchItem{ResultStatus: kmip.ResultStatusOperationPending}
	if e := reasonError("Get", "kms", pending); !errors.Is(e, ErrProtocol) {
		t.Errorf("pending: got %v", e)
	}
}

func TestClassifyTransport(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"refused", &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}, ErrUnavailable},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), ErrUnavailable},
		{"eof", io.EOF, ErrUnavailable},
		{"closed", net.ErrClosed, ErrUnavailable},
		{"our timeout", &timeoutError{time.Second}, ErrUnavailable},
		{"caller deadline", context.DeadlineExceeded, ErrUnavailable},
		{"os deadline", os.ErrDeadlineExceeded, ErrUnavailable},
		{"unknown CA", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, ErrTLS},
		{"hostname", x509.HostnameError{Host: "x"}, ErrTLS},
		{"alert", &net.OpError{Op: "remote error", Err: errors.New("tls: unknown certificate authority")}, ErrTLS},
		{"local tls", errors.New("tls: no cipher suite supported by both client and server"), ErrTLS},
		{"rejected after TLS 1.3 handshake", &rejectedError{io.EOF}, ErrTLS},
		{"garbage", errors.New("Batch count mismatch"), ErrProtocol},
	}
	for _, tc := range tests {
		if got := classifyTransport(tc.err); got != tc.want {
			t.Errorf("%s: classifyTransport(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
	if errors.Is(ownTimeout(context.Background(), context.DeadlineExceeded, time.Second), context.DeadlineExceeded) {
		t.Error("our own timeout must not look like the caller's deadline")
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if !errors.Is(ownTimeout(done, context.DeadlineExceeded, time.Second), context.DeadlineExceeded) {
		t.Error("the caller's deadline must stay visible")
	}
}

func TestStateAndVersion(t *testing.T) {
	if StateActive.String() != "Active" || StateDeactivated.String() != "Deactivated" || State(42).String() != "State(42)" {
		t.Error("State.String")
	}
	if !StateActive.Usable() || StatePreActive.Usable() || StateDeactivated.Usable() || StateCompromised.Usable() {
		t.Error("only Active is usable")
	}
	if stateOf(kmip.StateDestroyedCompromised) != StateDestroyedCompromised || stateOf(kmip.State(99)) != StateUnknown {
		t.Error("stateOf")
	}
	if (Version{1, 4}).String() != "1.4" || !(Version{1, 1}).Less(Version{1, 4}) || (Version{2, 0}).Less(Version{1, 4}) {
		t.Error("Version")
	}
	for _, v := range offeredVersions() {
		if versionOf(v).Less(minVersion) || maxVersion.Less(versionOf(v)) {
			t.Errorf("offered %v outside %v..%v", v, minVersion, maxVersion)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt := 1; attempt < 70; attempt++ {
		d := backoff(attempt)
		want := backoffBase
		for range attempt - 1 {
			want = min(2*want, backoffMax)
		}
		if d < want/2 || d > want {
			t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Op: "Get", Endpoint: "kms:5696", Reason: "ItemNotFound", Err: ErrNotFound, Cause: errors.New("no such object")}
	want := "kmip Get at kms:5696: kmip: key not found (reason ItemNotFound): no such object"
	if e.Error() != want {
		t.Fatalf("got %q, want %q", e.Error(), want)
	}
	multi := endpointErrors{&endpointError{addr: "a:1", kind: ErrUnavailable, err: io.EOF}, &endpointError{addr: "b:2", kind: ErrUnavailable, err: syscall.ECONNREFUSED}}
	if !errors.Is(multi, syscall.ECONNREFUSED) || !strings.Contains(multi.Error(), "a:1: EOF; b:2:") {
		t.Fatalf("endpointErrors: %v", multi)
	}
}

// writeSelfSigned writes a throw-away self-signed certificate usable as CA
// bundle and client certificate, for configuration tests.
func writeSelfSigned(t *testing.T) (ca, cert, key string) {
	t.Helper()
	certPEM, keyPEM := selfSignedPEM(t)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, cert, key
}
