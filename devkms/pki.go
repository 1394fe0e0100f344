package devkms

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside the state directory.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	clientCertFile = "client.crt"
	clientKeyFile  = "client.key"
)

// ClientCN is the common name of the generated client certificate, and so
// the owner of every key created with it.
const ClientCN = "cryptds"

const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 825 * 24 * time.Hour
	// renewBefore: a leaf certificate this close to expiry is reissued at
	// start (the CA is kept, so clients keep trusting the server).
	renewBefore = 24 * time.Hour
)

// pki is the dev KMS's certificate authority and server identity.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	roots  *x509.CertPool
	server tls.Certificate
}

// loadOrCreatePKI reuses the CA and certificates in dir, creating what is
// missing. A missing CA next to existing leaf certificates is refused rather
// than silently replaced: every client configured with the old CA would
// stop trusting the server.
func loadOrCreatePKI(dir string, now time.Time) (*pki, error) {
	p := &pki{dir: dir}
	caCertPath, caKeyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	switch ok, err := bothExist(caCertPath, caKeyPath); {
	case err != nil:
		return nil, err
	case ok:
		if p.caCert, p.caKey, err = loadPair(caCertPath, caKeyPath); err != nil {
			return nil, fmt.Errorf("load dev KMS CA: %w", err)
		}
	default:
		for _, f := range []string{serverCertFile, serverKeyFile, clientCertFile, clientKeyFile} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				return nil, fmt.Errorf("%s exists but the CA (%s) does not: remove the state directory to start over", f, caCertFile)
			}
		}
		if err := p.createCA(now); err != nil {
			return nil, err
		}
	}
	p.roots = x509.NewCertPool()
	p.roots.AddCert(p.caCert)

	serverTemplate := func(cn string) *x509.Certificate {
		return &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
	}
	certPath, keyPath := filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile)
	if err := p.ensureLeaf(certPath, keyPath, x509.ExtKeyUsageServerAuth, now, serverTemplate("cryptds dev KMS (NOT FOR PRODUCTION)")); err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	server, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	p.server = server

	certPath, keyPath = filepath.Join(dir, clientCertFile), filepath.Join(dir, clientKeyFile)
	if err := p.ensureLeaf(certPath, keyPath, x509.ExtKeyUsageClientAuth, now, clientTemplate(ClientCN)); err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return p, nil
}

func clientTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

func bothExist(a, b string) (bool, error) {
	n := 0
	for _, f := range []string{a, b} {
		_, err := os.Stat(f)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, fs.ErrNotExist):
			return false, err
		}
	}
	if n == 1 {
		return false, fmt.Errorf("only one of %s and %s exists", a, b)
	}
	return n == 2, nil
}

func (p *pki) createCA(now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	tpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "cryptds dev KMS CA (NOT FOR PRODUCTION)"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	if p.caCert, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	p.caKey = key
	return writePair(filepath.Join(p.dir, caCertFile), filepath.Join(p.dir, caKeyFile), der, key)
}

// ensureLeaf keeps a valid certificate at certPath or issues a new one.
func (p *pki) ensureLeaf(certPath, keyPath string, usage x509.ExtKeyUsage, now time.Time, tpl *x509.Certificate) error {
	ok, err := bothExist(certPath, keyPath)
	if err != nil {
		return err
	}
	if ok {
		cert, _, err := loadPair(certPath, keyPath)
		if err != nil {
			return err
		}
		_, verr := cert.Verify(x509.VerifyOptions{
			Roots: p.rootsOrNew(), CurrentTime: now.Add(renewBefore),
			KeyUsages: []x509.ExtKeyUsage{usage},
		})
		if verr == nil {
			return nil
		}
	}
	return p.issue(certPath, keyPath, tpl, now)
}

func (p *pki) rootsOrNew() *x509.CertPool {
	if p.roots != nil {
		return p.roots
	}
	r := x509.NewCertPool()
	r.AddCert(p.caCert)
	return r
}

// issue signs tpl with the CA and writes certificate and key (0600).
func (p *pki) issue(certPath, keyPath string, tpl *x509.Certificate, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if tpl.SerialNumber, err = serial(); err != nil {
		return err
	}
	tpl.NotBefore = now.Add(-time.Hour)
	tpl.NotAfter = now.Add(leafLifetime)
	tpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return fmt.Errorf("sign certificate: %w", err)
	}
	return writePair(certPath, keyPath, der, key)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyPath)
	}
	return cert, key, nil
}

// writeFileAtomic replaces path with data: temp file in the same directory,
// fsync, rename, fsync of the directory. A crash leaves the old or the new
// file, never a torn one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
