package kmipclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"

	"github.com/cryptds/cryptds/kmipclient"
)

// stallServer is a KMIP server whose handlers stall on demand, to pin down
// what the client does when a request goes unanswered.
type stallServer struct {
	addr           string
	ca, cert, key  string
	creates, gets  atomic.Int32
	stallGetsUntil int32 // Get calls up to this number stall
}

func newStallServer(t *testing.T, stallGets int32) *stallServer {
	t.Helper()
	s := &stallServer{stallGetsUntil: stallGets}
	dir := t.TempDir()
	caCert, caKey := newCA(t)
	serverCert := issue(t, caCert, caKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "stall"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	clientCert := issue(t, caCert, caKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "cryptds"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	s.ca = writePEM(t, dir, "ca.crt", "CERTIFICATE", caCert.Raw)
	s.cert = writePEM(t, dir, "client.crt", "CERTIFICATE", clientCert.Certificate[0])
	kder, err := x509.MarshalPKCS8PrivateKey(clientCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	s.key = writePEM(t, dir, "client.key", "PRIVATE KEY", kder)

	x := kmipserver.NewBatchExecutor()
	// A stalled handler returns only when its connection goes (the
	// client gave up and closed it, or Shutdown): the library's handler
	// then sends nothing. Releasing it while the client may be closing
	// would race the library's send of the late answer against its close
	// of the connection (kmipserver v0.8.1 does not order the two; the
	// race detector failed this test 1 run in 30 that way).
	stall := func(ctx context.Context) { <-ctx.Done() }
	x.Route(kmip.OperationCreate, kmipserver.HandleFunc(func(ctx context.Context, _ *payloads.CreateRequestPayload) (*payloads.CreateResponsePayload, error) {
		s.creates.Add(1)
		stall(ctx)
		return &payloads.CreateResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: "1"}, nil
	}))
	x.Route(kmip.OperationGetAttributes, kmipserver.HandleFunc(func(ctx context.Context, req *payloads.GetAttributesRequestPayload) (*payloads.GetAttributesResponsePayload, error) {
		if s.gets.Add(1) <= s.stallGetsUntil {
			stall(ctx)
		}
		return &payloads.GetAttributesResponsePayload{UniqueIdentifier: req.UniqueIdentifier,
			Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameState, AttributeValue: kmip.StateActive}}}, nil
	}))
	key := make([]byte, 32)
	x.Route(kmip.OperationGet, kmipserver.HandleFunc(func(_ context.Context, req *payloads.GetRequestPayload) (*payloads.GetResponsePayload, error) {
		return &payloads.GetResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: req.UniqueIdentifier,
			Object: &kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw,
				KeyValue:               &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &key}}},
				CryptographicAlgorithm: kmip.CryptographicAlgorithmAES, CryptographicLength: 256}}}, nil
	}))
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots,
		MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := kmipserver.NewServer(ln, x)
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	s.addr = ln.Addr().String()
	return s
}

func (s *stallServer) client(t *testing.T) *kmipclient.Client {
	return newClient(t, kmipclient.Config{
		Endpoints: []string{s.addr}, CAFile: s.ca, CertFile: s.cert, KeyFile: s.key,
		Timeout: 300 * time.Millisecond, Retries: 2, Logger: quiet(),
	})
}

// A Create that reached the server and got no answer is never sent again:
// the caller learns the outcome is unknown.
func TestCreateIsNeverResent(t *testing.T) {
	s := newStallServer(t, 0)
	c := s.client(t)
	_, err := c.CreateKEK(ctxT(t), "vm")
	wantErr(t, err, kmipclient.ErrUnavailable, "CreateKEK(stalled)")
	if !errors.Is(err, kmipclient.ErrOutcomeUnknown) {
		t.Fatalf("CreateKEK(stalled): %v does not say the outcome is unknown", err)
	}
	time.Sleep(200 * time.Millisecond) // room for a (wrong) resend to arrive
	if n := s.creates.Load(); n != 1 {
		t.Fatalf("server saw %d Create requests, want exactly 1", n)
	}
}

// An idempotent request that timed out is retried, on a new connection.
func TestGetIsRetried(t *testing.T) {
	s := newStallServer(t, 1)
	c := s.client(t)
	key, err := c.GetKey(ctxT(t), "1")
	if err != nil || len(key) != kmipclient.KEKSize {
		t.Fatalf("GetKey after one stalled attempt: %d bytes, %v", len(key), err)
	}
	if n := s.gets.Load(); n != 2 {
		t.Fatalf("server saw %d attempts, want 2", n)
	}
	// Every attempt stalls: ErrUnavailable after 1+Retries attempts, and the
	// error is our timeout, not the caller's deadline.
	s2 := newStallServer(t, 100)
	_, err = s2.client(t).GetKey(ctxT(t), "1")
	wantErr(t, err, kmipclient.ErrUnavailable, "GetKey(always stalled)")
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a KMS timeout must not look like the caller's deadline: %v", err)
	}
	if n := s2.gets.Load(); n != 3 {
		t.Errorf("server saw %d attempts, want 3 (1 + Retries)", n)
	}
	// The caller's own deadline is reported as such.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = s2.client(t).GetKey(ctx, "1")
	if !errors.Is(err, kmipclient.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("caller deadline: got %v", err)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, k
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tpl *x509.Certificate) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tpl.NotBefore, tpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
