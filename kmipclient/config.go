package kmipclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// Defaults, defined once: Config's zero values mean these.
const (
	// DefaultPort is the IANA port for KMIP over TLS, used for an endpoint
	// given without one.
	DefaultPort = 5696
	// DefaultTimeout bounds one network step: one dial (TCP, TLS handshake
	// and version negotiation) to one endpoint, or one request round trip.
	DefaultTimeout = 5 * time.Second
	// DefaultRetries is how many times a failed transport attempt is retried
	// (so 1+DefaultRetries attempts in all) before ErrUnavailable.
	DefaultRetries = 2
	// DefaultMaxConns caps the connection pool. PyKMIP serialises requests
	// (measured: barely more throughput with parallel connections), and the keyring
	// fetches each key once, so a few connections are plenty.
	DefaultMaxConns = 4
)

// backoff bounds for retries of transport failures.
const (
	backoffBase = 100 * time.Millisecond
	backoffMax  = 2 * time.Second
	// downFor is how long an endpoint that failed is tried after the
	// healthy ones, so failover does not pay a dead endpoint's timeout on
	// every new connection.
	downFor = 10 * time.Second
)

// Config says which key servers to use and how to authenticate to them.
// It is built once by the command line; the zero value of every optional
// field means the Default* constant above.
type Config struct {
	// Endpoints are the KMS cluster members as host:port (port defaults to
	// DefaultPort), in order of preference: a new connection goes to the
	// first one that answers.
	Endpoints []string
	// CAFile is the PEM bundle that signs the servers' certificates. The
	// system roots are never used: a KMS is trusted explicitly.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and key (mutual
	// TLS; the certificate's CN is the key owner on PyKMIP and the dev KMS).
	CertFile, KeyFile string
	// Timeout bounds each dial and each request (see DefaultTimeout).
	Timeout time.Duration
	// Retries after a transport failure; 0 means DefaultRetries, a negative
	// value means none.
	Retries int
	// MaxConns caps open connections; 0 means DefaultMaxConns.
	MaxConns int
	// Lazy skips the connection New makes to surface certificate and
	// reachability problems at startup. A host that must come up from its
	// persistent key cache while the KMS is down sets it.
	Lazy bool
	// Logger receives connection and failover events (never key material);
	// nil discards them.
	Logger *slog.Logger
	// Observe, when set, is told about every round trip and failed dial
	// with the endpoint that served it: which member of a cluster answers
	// and how fast is only known here (metrics use it). err is a transport
	// failure or nil; KMIP result reasons are not errors at this level.
	// It must be cheap and must not block.
	Observe func(op, endpoint string, d time.Duration, err error)
}

// settings is a validated Config with defaults applied.
type settings struct {
	endpoints []string
	tls       *tls.Config
	caPEM     []byte
	timeout   time.Duration
	retries   int
	maxConns  int
	lazy      bool
	log       *slog.Logger
	observe   func(op, endpoint string, d time.Duration, err error)
}

func (cfg Config) settings() (*settings, error) {
	s := &settings{
		timeout:  cfg.Timeout,
		retries:  cfg.Retries,
		maxConns: cfg.MaxConns,
		lazy:     cfg.Lazy,
		log:      cfg.Logger,
		observe:  cfg.Observe,
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("kmipclient: no endpoints configured")
	}
	seen := map[string]bool{}
	for _, e := range cfg.Endpoints {
		addr, err := normalizeEndpoint(e)
		if err != nil {
			return nil, err
		}
		if seen[addr] {
			return nil, fmt.Errorf("kmipclient: endpoint %s listed twice", addr)
		}
		seen[addr] = true
		s.endpoints = append(s.endpoints, addr)
	}
	switch {
	case s.timeout == 0:
		s.timeout = DefaultTimeout
	case s.timeout < 0:
		return nil, fmt.Errorf("kmipclient: negative timeout %v", s.timeout)
	}
	switch {
	case s.retries == 0:
		s.retries = DefaultRetries
	case s.retries < 0:
		s.retries = 0
	}
	switch {
	case s.maxConns == 0:
		s.maxConns = DefaultMaxConns
	case s.maxConns < 0:
		return nil, fmt.Errorf("kmipclient: negative MaxConns %d", s.maxConns)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.CAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("kmipclient: mutual TLS needs CAFile, CertFile and KeyFile")
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("kmipclient: read CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kmipclient: no PEM certificate in CA bundle %s", cfg.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("kmipclient: load client certificate %s: %w", cfg.CertFile, err)
	}
	s.caPEM = ca
	s.tls = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
	}
	return s, nil
}

// normalizeEndpoint turns "host" or "host:port" into "host:port".
func normalizeEndpoint(e string) (string, error) {
	if e == "" {
		return "", errors.New("kmipclient: empty endpoint")
	}
	host, port, err := net.SplitHostPort(e)
	if err != nil {
		// No port (or a bare IPv6 address): add the default one.
		host, port = e, strconv.Itoa(DefaultPort)
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
	}
	if host == "" {
		return "", fmt.Errorf("kmipclient: endpoint %q has no host", e)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return "", fmt.Errorf("kmipclient: endpoint %q: bad port", e)
	}
	return net.JoinHostPort(host, port), nil
}
