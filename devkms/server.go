package devkms

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
)

// Warning is what users of the dev KMS must be told, in logs, --help and
// the key file itself.
const Warning = "cryptds dev KMS: NOT a production key server — keys are stored unencrypted in its state directory"

// DefaultListen is the KMIP port on loopback.
const DefaultListen = "127.0.0.1:5696"

// handshakeTimeout bounds how long a connection may take to complete TLS, so
// a client that connects and sends nothing does not hold a goroutine.
const handshakeTimeout = 10 * time.Second

// Config is the dev KMS's configuration.
type Config struct {
	// StateDir holds the CA, certificates and keys.json. It is created 0700;
	// an existing directory that others can access is refused.
	StateDir string
	// Listen is a loopback host:port (default DefaultListen; port 0 picks a
	// free one, see Addr). Any other address is refused: the dev KMS must
	// never be reachable from the network.
	Listen string
	// Logger receives the server's own events; nil discards them.
	Logger *slog.Logger
	// Versions restricts the KMIP versions DiscoverVersions offers, newest
	// first; empty means the library's 1.4 down to 1.0. Tests use it to
	// check a client at the KMIP 1.1 floor.
	Versions []kmip.ProtocolVersion
}

// Server is a running dev KMS.
type Server struct {
	dir   string
	log   *slog.Logger
	pki   *pki
	store *store
	ln    net.Listener
	srv   *kmipserver.Server

	mu    sync.Mutex
	conns map[string]*trackedConn // by remote address

	served   chan struct{} // closed when the accept loop returns
	serveErr error
	close    sync.Once
	closeErr error
}

// New prepares the state directory (CA, certificates, key store), binds the
// loopback listener and starts serving in the background: the returned
// Server answers at Addr() until Close.
func New(cfg Config) (*Server, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("devkms: no state directory")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if err := checkLoopback(cfg.Listen); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := prepareDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	p, err := loadOrCreatePKI(dir, time.Now())
	if err != nil {
		return nil, fmt.Errorf("devkms: %w", err)
	}
	st, err := openStore(filepath.Join(dir, storeFile))
	if err != nil {
		return nil, fmt.Errorf("devkms: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("devkms: listen: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		_ = ln.Close()
		return nil, fmt.Errorf("devkms: %s resolved to non-loopback %s", cfg.Listen, ln.Addr())
	}
	s := &Server{
		dir: dir, log: log, pki: p, store: st, ln: ln,
		conns:  map[string]*trackedConn{},
		served: make(chan struct{}),
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert, // checks EKU clientAuth, like PyKMIP
		ClientCAs:    p.roots,
	}
	eng := &engine{store: st, log: log, now: time.Now, versions: slices.Clone(cfg.Versions)}
	s.srv = kmipserver.NewServer(&listener{Listener: ln, tls: tlsCfg, s: s}, eng.routes()).
		WithConnectHook(s.onConnect)
	go func() {
		err := s.srv.Serve()
		if errors.Is(err, kmipserver.ErrShutdown) {
			err = nil
		}
		s.serveErr = err
		close(s.served)
	}()
	log.Warn(Warning, "addr", s.Addr(), "state_dir", dir)
	return s, nil
}

// checkLoopback refuses any listen address that is not loopback.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("devkms: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("devkms: refusing to listen on %q: the dev KMS listens on loopback only (127.0.0.1, ::1, localhost)", addr)
	}
	return nil
}

// prepareDir creates the state directory 0700 or checks an existing one is
// private, and returns its absolute path (so the credential paths handed to
// clients stay valid if the process changes directory).
func prepareDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("devkms: state directory: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("devkms: state directory: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("devkms: state directory: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("devkms: state directory %s is not a directory", abs)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("devkms: state directory %s has mode %#o; it holds keys and must be private (0700)", abs, fi.Mode().Perm())
	}
	return abs, nil
}

// Addr is the address the server listens on (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// ClientCredentials returns the paths of the CA certificate, client
// certificate and client key a kmipclient needs to talk to this server.
func (s *Server) ClientCredentials() (ca, cert, key string) {
	return filepath.Join(s.dir, caCertFile), filepath.Join(s.dir, clientCertFile), filepath.Join(s.dir, clientKeyFile)
}

// IssueClientCert signs a client certificate for cn with the dev CA and
// writes it and its key (0600) to certPath and keyPath. A different CN is a
// different key owner: it cannot see or use the keys of ClientCN, which is
// how a second host or a test checks owner isolation.
func (s *Server) IssueClientCert(cn, certPath, keyPath string) error {
	if cn == "" {
		return errors.New("devkms: empty common name")
	}
	return s.pki.issue(certPath, keyPath, clientTemplate(cn), time.Now())
}

// Serve blocks until ctx is done (then closes the server and returns nil) or
// the server stops on its own (then returns why).
func (s *Server) Serve(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return s.Close()
	case <-s.served:
		_ = s.Close()
		return s.serveErr
	}
}

// Close stops accepting, drops every client connection (clients see the
// server go away, as with a crash; keys are already on disk) and waits for
// the handlers to return.
func (s *Server) Close() error {
	s.close.Do(func() {
		_ = s.ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Conn.Close()
		}
		s.mu.Unlock()
		// The library's Shutdown closes the listener again: that error is
		// expected. It then waits for the connection handlers, which the
		// closes above have ended.
		if err := s.srv.Shutdown(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = err
		}
		<-s.served
		if s.serveErr != nil && s.closeErr == nil {
			s.closeErr = s.serveErr
		}
		s.log.Info("dev KMS stopped", "addr", s.Addr())
	})
	return s.closeErr
}

// onConnect runs after the TLS handshake: lift the handshake deadline.
func (s *Server) onConnect(ctx context.Context) (context.Context, error) {
	s.mu.Lock()
	c := s.conns[kmipserver.RemoteAddr(ctx)]
	s.mu.Unlock()
	if c != nil {
		_ = c.Conn.SetDeadline(time.Time{})
	}
	return ctx, nil
}

// listener wraps accepted connections in TLS and tracks them so Close can
// end them and a stalled handshake times out.
type listener struct {
	net.Listener
	tls *tls.Config
	s   *Server
}

func (l *listener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	c := &trackedConn{Conn: raw, s: l.s}
	l.s.mu.Lock()
	l.s.conns[raw.RemoteAddr().String()] = c
	l.s.mu.Unlock()
	// The library type-asserts *tls.Conn to find the peer certificates.
	return tls.Server(c, l.tls), nil
}

// trackedConn forgets itself when closed.
type trackedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c.Conn.RemoteAddr().String())
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}
