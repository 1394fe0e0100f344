//go:build integration

package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifyListener is a fake service manager: an abstract unixgram socket
// collecting sd_notify datagrams.
type notifyListener struct {
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) (*notifyListener, string) {
	t.Helper()
	name := fmt.Sprintf("@cryptds-test-notify-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	l := &notifyListener{conn: conn, msgs: make(chan string, 32)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(l.msgs)
				return
			}
			l.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return l, name
}

// expect waits for a datagram containing want, failing on timeout.
func (l *notifyListener) expect(t *testing.T, want string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-l.msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", want)
			}
			if strings.Contains(m, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q from the daemon within %v", want, within)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestServiceNotifyReloadStop runs the daemon as systemd would (Type=notify):
// READY=1 once mounted, SIGHUP re-reads the config file and applies the log
// format, log level and key TTL live while reporting allow-other as needing
// a remount, and SIGTERM sends STOPPING=1 and exits 0.
func TestServiceNotifyReloadStop(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	l, sock := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	cfg := filepath.Join(t.TempDir(), "ds.toml")
	writeFile(t, cfg, fmt.Sprintf("dev = true\nstate-dir = %q\nlog-format = \"text\"\nkey-ttl = \"1h\"\n", state))
	m := startMount(t, backing, mnt, "--config", cfg)
	l.expect(t, "READY=1", 30*time.Second)

	writeFile(t, cfg, fmt.Sprintf("dev = true\nstate-dir = %q\nlog-format = \"json\"\ndebug = true\nkey-ttl = \"2h\"\nallow-other = true\n", state))
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	l.expect(t, "RELOADING=1", 10*time.Second)
	l.expect(t, "READY=1", 10*time.Second)
	if !waitFor(10*time.Second, func() bool { return strings.Contains(m.stderr.String(), `"msg":"config reloaded"`) }) {
		t.Fatalf("no JSON 'config reloaded' line after SIGHUP:\n%s", m.stderr.String())
	}
	logs := m.stderr.String()
	for _, want := range []string{`"applied":"debug,key-ttl,log-format"`, `"need_remount":"allow-other"`, `"msg":"key TTL changed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("reload log lacks %s:\n%s", want, logs)
		}
	}
	if !isMounted(mnt) {
		t.Fatal("SIGHUP unmounted the datastore")
	}

	// A broken file changes nothing and keeps the mount.
	writeFile(t, cfg, "log-format = \n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !waitFor(10*time.Second, func() bool { return strings.Contains(m.stderr.String(), "config reload failed") }) {
		t.Fatalf("broken config not reported:\n%s", m.stderr.String())
	}
	if !isMounted(mnt) {
		t.Fatal("a bad reload unmounted the datastore")
	}

	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	l.expect(t, "STOPPING=1", 20*time.Second)
	select {
	case <-m.exited:
		if m.exitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", m.exitErr, m.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if isMounted(mnt) {
		t.Fatal("still mounted after SIGTERM")
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// scrapeMetrics returns the samples of a Prometheus text page keyed by
// "name{labels}".
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s\n%s", url, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsMoveUnderIO scrapes a mount's metrics endpoint, does encrypted
// I/O, and checks the counters moved.
func TestMetricsMoveUnderIO(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", freePort(t))
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/metrics")
	startMount(t, backing, mnt, "--dev", "--state-dir", state, "--metrics-listen", addr)

	before := scrapeMetrics(t, url)
	for _, name := range []string{"cryptds_fs_bytes_encrypted_total", "cryptds_fs_open_encrypted_handles", "cryptds_keyring_misses_total"} {
		if _, ok := before[name]; !ok {
			t.Fatalf("first scrape lacks %s", name)
		}
	}
	vm := filepath.Join(mnt, "vm1")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	data := pattern("METRICS-PATTERN-", 4<<20)
	disk := filepath.Join(vm, "disk.raw")
	if err := os.WriteFile(disk, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// O_DIRECT so the read reaches the daemon instead of the page cache.
	run(t, "dd", "if="+disk, "of=/dev/null", "bs=1M", "iflag=direct", "status=none")
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	during := scrapeMetrics(t, url)
	f.Close()
	// The kernel sends RELEASE asynchronously after close(2) returns: wait
	// (bounded) for the daemon to see the handle go.
	after := scrapeMetrics(t, url)
	for deadline := time.Now().Add(5 * time.Second); after["cryptds_fs_open_encrypted_handles"] != 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		after = scrapeMetrics(t, url)
	}

	grew := func(name string, min float64) {
		t.Helper()
		if d := after[name] - before[name]; d < min {
			t.Errorf("%s grew by %v, want >= %v", name, d, min)
		}
	}
	grew("cryptds_fs_bytes_encrypted_total", 4<<20)
	grew("cryptds_fs_blocks_encrypted_total", 1024)
	grew("cryptds_fs_bytes_decrypted_total", 4<<20)
	grew("cryptds_fs_blocks_decrypted_total", 1024)
	grew(`cryptds_fuse_op_duration_seconds_count{op="write"}`, 4)
	grew(`cryptds_fuse_op_duration_seconds_count{op="read"}`, 4)
	grew(`cryptds_fuse_op_duration_seconds_count{op="create"}`, 1)
	grew(`cryptds_fuse_op_duration_seconds_count{op="lookup"}`, 1)
	grew("cryptds_keyring_misses_total", 1)
	grew("cryptds_keyring_memory_hits_total", 1)
	grew("cryptds_keyring_fetches_total", 1)
	grew("cryptds_keyring_fetch_duration_seconds_count", 1)
	kmsOps := 0.0
	for k, v := range after {
		if strings.HasPrefix(k, "cryptds_kms_request_duration_seconds_count{") {
			kmsOps += v
		}
	}
	if kmsOps < 2 { // create_kek + get_key
		t.Errorf("KMS requests counted: %v, want >= 2", kmsOps)
	}
	// per endpoint: the KMIP client's observer labels each round trip
	// with the endpoint that served it (the dev KMS here)
	perEndpoint := 0.0
	for k, v := range after {
		if strings.HasPrefix(k, `cryptds_kmip_round_trip_seconds_count{endpoint="127.0.0.1:`) {
			perEndpoint += v
		}
	}
	if perEndpoint < 2 {
		t.Errorf("KMIP round trips per endpoint: %v, want >= 2", perEndpoint)
	}
	if during["cryptds_fs_open_encrypted_handles"] < 1 || after["cryptds_fs_open_encrypted_handles"] != 0 {
		t.Errorf("open encrypted handles: %v while open, %v after close", during["cryptds_fs_open_encrypted_handles"], after["cryptds_fs_open_encrypted_handles"])
	}
	if after["cryptds_fs_auth_failures_total"] != 0 {
		t.Errorf("auth failures: %v", after["cryptds_fs_auth_failures_total"])
	}
}

// TestMetricsRefuseNonLoopback keeps metrics private unless asked.
func TestMetricsRefuseNonLoopback(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	code, out := runBinary(t, "mount", "--dev", "--state-dir", state, "--metrics-listen", "0.0.0.0:0", backing, mnt)
	if code != 2 || !strings.Contains(out, "not loopback") {
		t.Fatalf("exit %d, want 2 with 'not loopback':\n%s", code, out)
	}
}

// runBinary runs cryptds to completion and returns its exit code and output.
func runBinary(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}
