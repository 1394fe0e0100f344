// Package metrics exports a mount's counters in the Prometheus text format.
//
// Counters that fs and keyring already keep (bytes and blocks through the
// cipher, authentication failures, key cache hits, KMS fetch latency) are
// read from their Stats snapshots on every scrape, so nothing is counted
// twice and an unscraped daemon pays nothing for them. Only what those
// packages do not keep is measured here: FUSE operation latencies (through
// fs.Config.Observe) and KMS requests per endpoint (through a wrapping
// keyring.KeySource).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/keyring"
)

const namespace = "cryptds"

// Exporter owns one registry for one mount. Create it before the mount so
// its ObserveOp can be handed to fs.Config, then attach the Stats sources
// with Attach once the Root and the Ring exist.
type Exporter struct {
	reg    *prometheus.Registry
	ops    *prometheus.HistogramVec
	kmsDur *prometheus.HistogramVec
	kmsErr *prometheus.CounterVec
	// per KMS endpoint, from the KMIP client's observer
	kmipDur *prometheus.HistogramVec
	kmipErr *prometheus.CounterVec
}

// New returns an Exporter with the Go runtime and process collectors and
// the latency histograms registered; the snapshot collectors come with
// Attach.
func New() *Exporter {
	e := &Exporter{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "fuse", Name: "op_duration_seconds",
			Help: "Time the daemon took to serve FUSE requests, by operation.",
			// 10µs (a cached getattr) .. ~5s (a 1 MiB write stuck behind a slow disk).
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10),
		}, []string{"op"}),
		kmsDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "kms", Name: "request_duration_seconds",
			Help:    "KMS requests made by the key ring (including failover and retries), by KMS cluster and operation.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .05, .1, .5, 1, 5, 15},
		}, []string{"kms", "op"}),
		kmsErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "kms", Name: "request_errors_total",
			Help: "KMS requests that failed, by the endpoint(s) that failed them and operation.",
		}, []string{"endpoint", "op"}),
	}
	e.kmipDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "kmip", Name: "round_trip_seconds",
		Help:    "KMIP round trips and failed dials, by the endpoint that served them and operation.",
		Buckets: []float64{.0005, .001, .002, .005, .01, .05, .1, .5, 1, 5, 15},
	}, []string{"endpoint", "op"})
	e.kmipErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "kmip", Name: "transport_errors_total",
		Help: "KMIP round trips and dials that failed in transport (unreachable, TLS, timeout), by endpoint and operation.",
	}, []string{"endpoint", "op"})
	e.reg.MustRegister(e.ops, e.kmsDur, e.kmsErr, e.kmipDur, e.kmipErr,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return e
}

// ObserveOp records one FUSE operation; pass it as fs.Config.Observe.
func (e *Exporter) ObserveOp(op string, d time.Duration) {
	e.ops.WithLabelValues(op).Observe(d.Seconds())
}

// FSStats is what the exporter reads from a mount (*fs.Root has it).
type FSStats interface{ Stats() fs.Stats }

// KeyStats is what the exporter reads from the key ring (*keyring.Ring
// has it).
type KeyStats interface{ Stats() keyring.Stats }

// Attach registers collectors that read f and k on every scrape. Either
// may be nil. Call it once.
func (e *Exporter) Attach(f FSStats, k KeyStats) error {
	if f != nil {
		if err := e.reg.Register(fsCollector{f}); err != nil {
			return fmt.Errorf("metrics: register fs collector: %w", err)
		}
	}
	if k != nil {
		if err := e.reg.Register(keyCollector{k}); err != nil {
			return fmt.Errorf("metrics: register keyring collector: %w", err)
		}
	}
	return nil
}

// Handler serves the registry in the Prometheus exposition formats.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Server is a running metrics endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
	err chan error
}

// ErrNotLoopback refuses a listen address other hosts could reach: the
// metrics name VMs' activity, so exposing them is an explicit choice.
var ErrNotLoopback = errors.New("metrics: listen address is not loopback (pass --metrics-listen-any to allow it)")

// Listen starts serving /metrics on addr. Unless any is set, addr's host
// must be a loopback address or "localhost".
func (e *Exporter) Listen(addr string, any bool) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen address %q: %w", addr, err)
	}
	if !any && !isLoopback(host) {
		return nil, fmt.Errorf("%w: %s", ErrNotLoopback, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", e.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "cryptds metrics: /metrics")
	})
	s := &Server{ln: ln, err: make(chan error, 1),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() { s.err <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address actually listened on (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, letting in-flight scrapes finish for a moment.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	if err := <-s.err; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve: %w", err)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ObserveKMIP records one KMIP round trip or failed dial against the
// endpoint that served it; hand it to kmipclient.Config.Observe.
func (e *Exporter) ObserveKMIP(op, endpoint string, d time.Duration, err error) {
	e.kmipDur.WithLabelValues(endpoint, op).Observe(d.Seconds())
	if err != nil {
		e.kmipErr.WithLabelValues(endpoint, op).Inc()
	}
}
