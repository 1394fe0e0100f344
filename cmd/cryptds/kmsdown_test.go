package main

import (
	"context"
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

	"github.com/cryptds/cryptds/devkms"
	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/vmctl"
)

// devKMS starts a dev KMS in a temporary directory.
func devKMS(t *testing.T) *devkms.Server {
	t.Helper()
	srv, err := devkms.New(devkms.Config{StateDir: filepath.Join(t.TempDir(), "kms"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// acceptAll hands every connection to ln to fn until the test ends.
func acceptAll(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go fn(c)
		}
	}()
	return ln.Addr().String()
}

// TestKMSDownIsENOKEY: whichever way the key server fails to answer, the
// mount's key calls (a new VM's KEK at setfattr user.cryptds.policy, an
// open's KEK fetch) fail with ENOKEY, and the message names the endpoint.
// A refused dial used to reach setfattr as ECONNREFUSED.
func TestKMSDownIsENOKEY(t *testing.T) {
	creds := devKMS(t)
	ca, cert, key := creds.ClientCredentials()
	cases := []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"connection refused", func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			_ = ln.Close()
			return addr
		}},
		{"closed at once (EOF)", func(t *testing.T) string { return acceptAll(t, func(c net.Conn) { _ = c.Close() }) }},
		{"never answers (timeout)", func(t *testing.T) string {
			return acceptAll(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
		}},
		{"TLS: another CA signed the server", func(t *testing.T) string { return devKMS(t).Addr() }},
		{"unknown host", func(*testing.T) string { return "no-such-kms.invalid:5696" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := c.addr(t)
			cl, err := kmipclient.New(context.Background(), kmipclient.Config{
				Endpoints: []string{addr}, CAFile: ca, CertFile: cert, KeyFile: key,
				Timeout: 200 * time.Millisecond, Retries: -1, Lazy: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cl.Close() })
			ring, err := keyring.Open(cl, keyring.Options{Cache: keyring.CacheOff})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ring.Close() })
			keys := mountKeys{Ring: ring}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = keys.NewKEK(ctx, "cryptds/ds/vm1")
			wantENOKEY(t, "NewKEK", addr, err)
			_, err = keys.KEK(ctx, "1")
			wantENOKEY(t, "KEK", addr, err)
		})
	}
}

// wantENOKEY checks the first errno in err's chain, the one fs hands to
// the kernel, and that the message names the endpoint.
func wantENOKEY(t *testing.T, op, addr string, err error) {
	t.Helper()
	var errno syscall.Errno
	if !errors.As(err, &errno) || errno != syscall.ENOKEY {
		t.Errorf("%s: errno %v, want ENOKEY: %v", op, errno, err)
	}
	if err != nil && !strings.Contains(err.Error(), addr) {
		t.Errorf("%s: %q does not name the endpoint %s", op, err, addr)
	}
}

// TestVMExitKMS: a vm command that fails because the mount could not get
// a key (ENOKEY from a policy change, an open or a copy) exits 4.
func TestVMExitKMS(t *testing.T) {
	for _, err := range []error{
		&os.PathError{Op: "open", Path: "/mnt/ds/vm1/disk.raw", Err: syscall.ENOKEY},
		fmt.Errorf("copy disk.raw: %w", &os.PathError{Op: "read", Path: "/mnt/ds/vm1/disk.raw", Err: syscall.ENOKEY}),
		fmt.Errorf("rekey: %w", vmctl.ErrKMS),
	} {
		if got := exitCode(vmExit(err)); got != ExitKMS {
			t.Errorf("%v: exit %d, want %d", err, got, ExitKMS)
		}
	}
}
