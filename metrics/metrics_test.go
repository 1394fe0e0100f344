package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/keyring"
)

type fakeFS struct{ s fs.Stats }

func (f *fakeFS) Stats() fs.Stats { return f.s }

type fakeRing struct{ s keyring.Stats }

func (f *fakeRing) Stats() keyring.Stats { return f.s }

type fakeSource struct{ err error }

func (f fakeSource) GetKey(context.Context, string) ([]byte, error) { return []byte("k"), f.err }
func (f fakeSource) CreateKEK(context.Context, string) (string, error) {
	return "id", f.err
}
func (f fakeSource) Endpoints() []string { return []string{"a:1", "b:2"} }

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

func TestExport(t *testing.T) {
	e := New()
	f := &fakeFS{fs.Stats{BytesEncrypted: 8192, BlocksEncrypted: 2, AuthFailures: 3, OpenEncryptedHandles: 4}}
	r := &fakeRing{keyring.Stats{MemoryHits: 5, Misses: 6, Keys: 1, FetchLatency: keyring.Histogram{
		Count: 2, Sum: 3 * time.Millisecond,
		Buckets: []keyring.Bucket{{UpperBound: time.Millisecond, Count: 1}, {UpperBound: 5 * time.Millisecond, Count: 2}}}}}
	if err := e.Attach(f, r); err != nil {
		t.Fatal(err)
	}
	e.ObserveOp(fs.OpRead, 3*time.Millisecond)
	src := e.InstrumentKeySource(fakeSource{}, nil)
	if _, err := src.GetKey(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	bad := e.InstrumentKeySource(fakeSource{err: errors.New("down")}, func(error) string { return "b:2" })
	if _, err := bad.CreateKEK(context.Background(), "n"); err == nil {
		t.Fatal("error swallowed")
	}
	srv, err := e.Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	out := scrape(t, "http://"+srv.Addr()+"/metrics")
	for _, want := range []string{
		"cryptds_fs_bytes_encrypted_total 8192",
		"cryptds_fs_blocks_encrypted_total 2",
		"cryptds_fs_auth_failures_total 3",
		"cryptds_fs_open_encrypted_handles 4",
		"cryptds_keyring_memory_hits_total 5",
		"cryptds_keyring_misses_total 6",
		`cryptds_keyring_fetch_duration_seconds_bucket{le="0.001"} 1`,
		"cryptds_keyring_fetch_duration_seconds_count 2",
		`cryptds_fuse_op_duration_seconds_count{op="read"} 1`,
		`cryptds_kms_request_duration_seconds_count{kms="a:1,b:2",op="get_key"} 1`,
		`cryptds_kms_request_errors_total{endpoint="b:2",op="create_kek"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// Snapshots are read on each scrape: a change shows without re-registering.
	f.s.BytesEncrypted = 9000
	if out := scrape(t, "http://"+srv.Addr()+"/metrics"); !strings.Contains(out, "cryptds_fs_bytes_encrypted_total 9000") {
		t.Error("second scrape did not read a new snapshot")
	}
}

func TestListenRefusesNonLoopback(t *testing.T) {
	e := New()
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:9100", "[::]:0"} {
		if _, err := e.Listen(addr, false); !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: err %v, want ErrNotLoopback", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		s, err := e.Listen(addr, false)
		if err != nil {
			if strings.Contains(err.Error(), "cannot assign") || strings.Contains(err.Error(), "address family") {
				continue // no IPv6 loopback here
			}
			t.Errorf("%s: %v", addr, err)
			continue
		}
		s.Close()
	}
	if _, err := e.Listen("nohostport", false); err == nil {
		t.Error("malformed address accepted")
	}
}
