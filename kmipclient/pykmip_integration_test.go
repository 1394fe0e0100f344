//go:build integration

package kmipclient_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The PyKMIP suite: the same client suite as against the dev KMS, against
// the Debian python3-pykmip server started by integration/pykmip.sh. Set
// CRYPTDS_PYKMIP_DIR to use a server that script already started there.

const pykmipScript = "../integration/pykmip.sh"

func script(t testing.TB, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", append([]string{pykmipScript}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("pykmip.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newPyKMIP starts PyKMIP (or attaches to CRYPTDS_PYKMIP_DIR) as a fixture.
// In CI a missing server is a failure, never a skip.
func newPyKMIP(t testing.TB) *fixture {
	t.Helper()
	dir := os.Getenv("CRYPTDS_PYKMIP_DIR")
	var port string
	if dir != "" {
		ep, err := os.ReadFile(filepath.Join(dir, "endpoint"))
		if err != nil {
			t.Fatalf("CRYPTDS_PYKMIP_DIR=%s: no endpoint file (start it with integration/pykmip.sh start DIR): %v", dir, err)
		}
		_, port, err = net.SplitHostPort(strings.TrimSpace(string(ep)))
		if err != nil {
			t.Fatalf("CRYPTDS_PYKMIP_DIR=%s: endpoint: %v", dir, err)
		}
	} else {
		for _, bin := range []string{"pykmip-server", "openssl"} {
			if _, err := exec.LookPath(bin); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("CI: %s is required for the PyKMIP suite (apt-get install python3-pykmip openssl)", bin)
				}
				t.Skipf("%s not installed; the PyKMIP suite needs python3-pykmip and openssl", bin)
			}
		}
		dir = filepath.Join(t.TempDir(), "pykmip")
		_, port, _ = net.SplitHostPort(deadAddr(t))
		script(t, "start", dir, port)
		t.Cleanup(func() { script(t, "stop", dir) })
	}
	f := &fixture{
		name:          "PyKMIP",
		addr:          net.JoinHostPort("127.0.0.1", port),
		ca:            filepath.Join(dir, "ca.crt"),
		cert:          filepath.Join(dir, "client.crt"),
		key:           filepath.Join(dir, "client.key"),
		otherCert:     filepath.Join(dir, "other.crt"),
		otherKey:      filepath.Join(dir, "other.key"),
		untrustedCert: filepath.Join(dir, "untrusted.crt"),
		untrustedKey:  filepath.Join(dir, "untrusted.key"),
	}
	f.stop = func(t testing.TB) { script(t, "stop", dir) }
	f.start = func(t testing.TB) { script(t, "start", dir, port) }
	return f
}

func TestSuitePyKMIP(t *testing.T) {
	runSuite(t, newPyKMIP(t))
}

func BenchmarkGetPyKMIP(b *testing.B) {
	benchmarkGet(b, newPyKMIP(b))
}
