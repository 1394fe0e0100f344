package devkms

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	ovh "github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

func TestMain(m *testing.M) {
	// The library's server logs every connection through slog.Default.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

func start(t *testing.T, dir, listen string) *Server {
	t.Helper()
	s, err := New(Config{StateDir: dir, Listen: listen})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// dial connects a raw library client, so tests see the KMIP reasons the
// server sends rather than kmipclient's mapping of them.
func dial(t *testing.T, s *Server, cert, key string) *ovh.Client {
	t.Helper()
	ca, _, _ := s.ClientCredentials()
	c, err := ovh.Dial(s.Addr(), ovh.WithRootCAFile(ca), ovh.WithClientCertFiles(cert, key))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ownerClient(t *testing.T, s *Server) *ovh.Client {
	_, cert, key := s.ClientCredentials()
	return dial(t, s, cert, key)
}

// do sends payloads in one message and returns the batch items.
func do(t *testing.T, c *ovh.Client, pls ...kmip.OperationPayload) []kmip.ResponseBatchItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Batch(ctx, pls...)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	return res
}

func reasonOf(bi kmip.ResponseBatchItem) string {
	if bi.ResultStatus == kmip.ResultStatusSuccess {
		return "Success"
	}
	return ttlv.EnumStr(bi.ResultReason)
}

func aesCreate(name string, mask kmip.CryptographicUsageMask, length int32) *payloads.CreateRequestPayload {
	attrs := []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: length},
		{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}},
	}
	if mask != 0 {
		attrs = append(attrs, kmip.Attribute{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: mask})
	}
	return &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: attrs}}
}

const mask = kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt

// createActive makes an active key through a Create+Activate batch that
// relies on the ID placeholder, as kmipclient sends it.
func createActive(t *testing.T, c *ovh.Client, name string) string {
	t.Helper()
	res := do(t, c, aesCreate(name, mask, 256), &payloads.ActivateRequestPayload{})
	if reasonOf(res[0]) != "Success" || reasonOf(res[1]) != "Success" {
		t.Fatalf("create+activate: %s, %s", reasonOf(res[0]), reasonOf(res[1]))
	}
	return res[0].ResponsePayload.(*payloads.CreateResponsePayload).UniqueIdentifier
}

func TestListenLoopbackOnly(t *testing.T) {
	tests := []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:0", true},
		{"localhost:0", true},
		{"[::1]:0", true},
		{"0.0.0.0:0", false},
		{":0", false},
		{"[::]:0", false},
		{"192.0.2.1:5696", false},
		{"kms.example.com:5696", false},
		{"127.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.listen, func(t *testing.T) {
			s, err := New(Config{StateDir: filepath.Join(t.TempDir(), "kms"), Listen: tc.listen})
			if s != nil {
				defer s.Close()
			}
			if (err == nil) != tc.ok {
				if tc.ok && strings.Contains(err.Error(), "listen:") {
					t.Skipf("loopback %s not available here: %v", tc.listen, err)
				}
				t.Fatalf("New(Listen %q): err %v, want ok=%v", tc.listen, err, tc.ok)
			}
		})
	}
}

func TestDefaultListen(t *testing.T) {
	if DefaultListen != "127.0.0.1:5696" || checkLoopback(DefaultListen) != nil {
		t.Fatalf("DefaultListen %q must be loopback port 5696", DefaultListen)
	}
}

func TestStateDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kms")
	s := start(t, dir, "127.0.0.1:0")
	ca, cert, key := s.ClientCredentials()
	for path, want := range map[string]os.FileMode{
		dir: 0o700 | os.ModeDir, key: 0o600, filepath.Join(dir, caKeyFile): 0o600,
		filepath.Join(dir, serverKeyFile): 0o600, filepath.Join(dir, storeFile): 0o600,
		ca: 0o644, cert: 0o644,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	// The client certificate is for client auth, CN "cryptds", from our CA.
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if leaf.Subject.CommonName != ClientCN || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("client cert: CN %q EKU %v", leaf.Subject.CommonName, leaf.ExtKeyUsage)
	}
	caBefore, _ := os.ReadFile(ca)
	certBefore, _ := os.ReadFile(cert)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := start(t, dir, "127.0.0.1:0")
	ca2, cert2, _ := s2.ClientCredentials()
	caAfter, _ := os.ReadFile(ca2)
	certAfter, _ := os.ReadFile(cert2)
	if !bytes.Equal(caBefore, caAfter) || !bytes.Equal(certBefore, certAfter) {
		t.Error("certificates were regenerated on restart")
	}
}

func TestStateDirectoryRefused(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{StateDir: open, Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "private") {
		t.Errorf("group-readable state dir: got %v", err)
	}
	if _, err := New(Config{Listen: "127.0.0.1:0"}); err == nil {
		t.Error("empty state dir accepted")
	}
	// Leaf certificates without their CA: refuse rather than mint a new CA.
	dir := filepath.Join(t.TempDir(), "kms")
	s := start(t, dir, "127.0.0.1:0")
	_ = s.Close()
	for _, f := range []string{caCertFile, caKeyFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(Config{StateDir: dir, Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "CA") {
		t.Errorf("missing CA: got %v", err)
	}
}

func TestReasonsMatchPyKMIP(t *testing.T) {
	s := start(t, filepath.Join(t.TempDir(), "kms"), "127.0.0.1:0")
	c := ownerClient(t, s)
	if v := c.Version(); v != kmip.V1_4 {
		t.Errorf("negotiated %v, want 1.4", v)
	}
	active := createActive(t, c, "active")
	preActive := do(t, c, aesCreate("pre", mask, 256))[0].ResponsePayload.(*payloads.CreateResponsePayload).UniqueIdentifier

	tests := []struct {
		name string
		req  kmip.OperationPayload
		want string
	}{
		{"create without usage mask", aesCreate("x", 0, 256), "InvalidField"},
		{"create bad length", aesCreate("x", mask, 100), "InvalidField"},
		{"create not AES", &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithm3DES},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(192)},
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: mask}}}}, "InvalidField"},
		{"create secret data", &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSecretData}, "InvalidField"},
		{"get unknown", &payloads.GetRequestPayload{UniqueIdentifier: "nope"}, "ItemNotFound"},
		{"get opaque format", &payloads.GetRequestPayload{UniqueIdentifier: active, KeyFormatType: kmip.KeyFormatTypeOpaque}, "KeyFormatTypeNotSupported"},
		{"activate active", &payloads.ActivateRequestPayload{UniqueIdentifier: active}, "PermissionDenied"},
		{"destroy active", &payloads.DestroyRequestPayload{UniqueIdentifier: active}, "PermissionDenied"},
		{"revoke without reason", &payloads.RevokeRequestPayload{UniqueIdentifier: active}, "InvalidField"},
		{"revoke pre-active", &payloads.RevokeRequestPayload{UniqueIdentifier: preActive,
			RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation}}, "IllegalOperation"},
		{"locate by unsupported attribute", &payloads.LocateRequestPayload{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameContactInformation, AttributeValue: "x"}}}, "FeatureNotSupported"},
		{"unsupported operation", &payloads.ObtainLeaseRequestPayload{UniqueIdentifier: active}, "OperationNotSupported"},
		{"get pre-active", &payloads.GetRequestPayload{UniqueIdentifier: preActive}, "Success"},
		{"destroy pre-active", &payloads.DestroyRequestPayload{UniqueIdentifier: preActive}, "Success"},
		{"get destroyed", &payloads.GetRequestPayload{UniqueIdentifier: preActive}, "ItemNotFound"},
	}
	for _, tc := range tests {
		if got := reasonOf(do(t, c, tc.req)[0]); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestLifecycleAndOwners(t *testing.T) {
	s := start(t, filepath.Join(t.TempDir(), "kms"), "127.0.0.1:0")
	c := ownerClient(t, s)
	dir := t.TempDir()
	otherCert, otherKey := filepath.Join(dir, "o.crt"), filepath.Join(dir, "o.key")
	if err := s.IssueClientCert("someone-else", otherCert, otherKey); err != nil {
		t.Fatal(err)
	}
	other := dial(t, s, otherCert, otherKey)

	id := createActive(t, c, "vm1")
	get := do(t, c, &payloads.GetRequestPayload{UniqueIdentifier: id})[0]
	key, err := get.ResponsePayload.(*payloads.GetResponsePayload).SymmetricKey()
	if err != nil || len(key) != 32 {
		t.Fatalf("Get: %d bytes, %v", len(key), err)
	}
	state := func(c *ovh.Client) (kmip.State, string) {
		bi := do(t, c, &payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})[0]
		if bi.ResultStatus != kmip.ResultStatusSuccess {
			return 0, reasonOf(bi)
		}
		attrs := bi.ResponsePayload.(*payloads.GetAttributesResponsePayload).Attribute
		if len(attrs) != 1 {
			t.Fatalf("GetAttributes(State): %d attributes", len(attrs))
		}
		return attrs[0].AttributeValue.(kmip.State), "Success"
	}
	if st, _ := state(c); st != kmip.StateActive {
		t.Fatalf("state %v, want Active", st)
	}
	locate := func(c *ovh.Client, name string) []string {
		bi := do(t, c, &payloads.LocateRequestPayload{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameName,
			AttributeValue: kmip.Name{NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}}}})[0]
		return bi.ResponsePayload.(*payloads.LocateResponsePayload).UniqueIdentifier
	}
	if got := locate(c, "vm1"); len(got) != 1 || got[0] != id {
		t.Fatalf("Locate(vm1) = %v", got)
	}
	// Another client certificate CN: a different owner.
	if got := locate(other, "vm1"); len(got) != 0 {
		t.Fatalf("other owner locates %v", got)
	}
	if _, reason := state(other); reason != "PermissionDenied" {
		t.Fatalf("other owner GetAttributes: %s", reason)
	}
	if got := reasonOf(do(t, other, &payloads.GetRequestPayload{UniqueIdentifier: id})[0]); got != "PermissionDenied" {
		t.Fatalf("other owner Get: %s", got)
	}
	revoke := &payloads.RevokeRequestPayload{UniqueIdentifier: id,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation}}
	if got := reasonOf(do(t, c, revoke)[0]); got != "Success" {
		t.Fatalf("revoke: %s", got)
	}
	if st, _ := state(c); st != kmip.StateDeactivated {
		t.Fatalf("state %v, want Deactivated", st)
	}
	if got := reasonOf(do(t, c, &payloads.GetRequestPayload{UniqueIdentifier: id})[0]); got != "Success" {
		t.Fatalf("Get of a revoked key (PyKMIP allows it): %s", got)
	}
	if got := reasonOf(do(t, c, &payloads.DestroyRequestPayload{UniqueIdentifier: id})[0]); got != "Success" {
		t.Fatalf("destroy: %s", got)
	}
	if _, reason := state(c); reason != "ItemNotFound" {
		t.Fatalf("destroyed key: %s", reason)
	}
	// Compromise is allowed from any state.
	id2 := createActive(t, c, "vm2")
	compromise := &payloads.RevokeRequestPayload{UniqueIdentifier: id2,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeKeyCompromise}}
	if got := reasonOf(do(t, c, compromise)[0]); got != "Success" {
		t.Fatalf("compromise: %s", got)
	}
}

func TestKeysPersistAcrossRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kms")
	s := start(t, dir, "127.0.0.1:0")
	addr := s.Addr()
	c := ownerClient(t, s)
	id := createActive(t, c, "persist")
	key1, _ := do(t, c, &payloads.GetRequestPayload{UniqueIdentifier: id})[0].ResponsePayload.(*payloads.GetResponsePayload).SymmetricKey()
	_ = c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(filepath.Join(dir, storeFile))
	if err != nil {
		t.Fatal(err)
	}
	var f storeFileV1
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != storeVersion || f.Warning != Warning || len(f.Objects) != 1 {
		t.Fatalf("keys.json: %v %+v", err, f)
	}

	s2 := start(t, dir, addr)
	c2 := ownerClient(t, s2)
	bi := do(t, c2, &payloads.GetRequestPayload{UniqueIdentifier: id})[0]
	key2, err := bi.ResponsePayload.(*payloads.GetResponsePayload).SymmetricKey()
	if err != nil || !bytes.Equal(key1, key2) {
		t.Fatalf("key after restart: equal %v, err %v", bytes.Equal(key1, key2), err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

// handshake connects with crypto/tls alone and reads once: the server's
// verdict on a client certificate arrives as an alert on the first read
// (TLS 1.3 verifies it after the client's side of the handshake is done).
func handshake(t *testing.T, s *Server, certs []tls.Certificate) error {
	t.Helper()
	ca, _, _ := s.ClientCredentials()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: roots, Certificates: certs, ServerName: "127.0.0.1"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		return nil // accepted: the server waits for a request
	}
	return err
}

func TestClientCertificateRequired(t *testing.T) {
	s := start(t, filepath.Join(t.TempDir(), "kms"), "127.0.0.1:0")
	_, cert, key := s.ClientCredentials()
	good, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	server, err := tls.LoadX509KeyPair(filepath.Join(s.dir, serverCertFile), filepath.Join(s.dir, serverKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		certs  []tls.Certificate
		accept bool
	}{
		{"client certificate", []tls.Certificate{good}, true},
		{"no certificate", nil, false},
		// Same CA, but EKU serverAuth only: not a client certificate.
		{"server certificate", []tls.Certificate{server}, false},
	}
	for _, tc := range tests {
		if err := handshake(t, s, tc.certs); (err == nil) != tc.accept {
			t.Errorf("%s: accepted=%v (err %v), want %v", tc.name, err == nil, err, tc.accept)
		}
	}
}

func TestCloseWithConnectedClients(t *testing.T) {
	s := start(t, filepath.Join(t.TempDir(), "kms"), "127.0.0.1:0")
	c := ownerClient(t, s)
	createActive(t, c, "x")
	t0 := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Close took %v with an idle client connected", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s2 := start(t, filepath.Join(t.TempDir(), "kms2"), "127.0.0.1:0")
	if err := s2.Serve(ctx); err != nil {
		t.Fatalf("Serve(cancelled ctx): %v", err)
	}
}

func TestQuery(t *testing.T) {
	s := start(t, filepath.Join(t.TempDir(), "kms"), "127.0.0.1:0")
	c := ownerClient(t, s)
	bi := do(t, c, &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{
		kmip.QueryFunctionOperations, kmip.QueryFunctionObjects, kmip.QueryFunctionServerInformation}})[0]
	q := bi.ResponsePayload.(*payloads.QueryResponsePayload)
	if len(q.Operations) != len(operations) || len(q.ObjectType) != 1 || !strings.Contains(q.VendorIdentification, "NOT a production") {
		t.Fatalf("Query: %+v", q)
	}
}
