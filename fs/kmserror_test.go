package fs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestKMSErrorIsENOKEY: a policy change whose KMS call failed reaches the
// caller as ENOKEY however the transport failed (the errno of a refused
// dial must not win), while a key errno the key source chose is kept.
func TestKMSErrorIsENOKEY(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	cases := []struct {
		name  string
		cause error
		want  syscall.Errno
	}{
		{"connection refused", dial, syscall.ENOKEY},
		{"timeout", fmt.Errorf("dial: %w", syscall.ETIMEDOUT), syscall.ENOKEY},
		{"host unreachable", fmt.Errorf("dial: %w", syscall.EHOSTUNREACH), syscall.ENOKEY},
		{"EOF", io.EOF, syscall.ENOKEY},
		{"TLS", tls.AlertError(42), syscall.ENOKEY},
		{"unknown host", &net.DNSError{Err: "no such host", Name: "kms.invalid", IsNotFound: true}, syscall.ENOKEY},
		{"key destroyed", fmt.Errorf("%w: gone", syscall.EKEYREVOKED), syscall.EKEYREVOKED},
		{"unavailable, chosen by the key source", fmt.Errorf("%w: %w", syscall.ENOKEY, dial), syscall.ENOKEY},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := kmsError(fmt.Errorf("create KEK cryptds/x/vm1: %w", c.cause))
			if got := toErrno(err); got != c.want {
				t.Errorf("errno %v, want %v (%v)", got, c.want, err)
			}
			if !errors.Is(err, c.cause) {
				t.Error("the cause is no longer in the chain")
			}
		})
	}
}
