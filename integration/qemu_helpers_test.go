//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// kmsMount mounts a fresh datastore against the PyKMIP server and returns
// the backing dir, the mountpoint and the mount.
func kmsMount(t *testing.T) (backing, mnt string, m *mountProc) {
	t.Helper()
	requireRoot(t)
	kms := needPyKMIP(t)
	backing, mnt, state := dirs(t)
	m = startMount(t, backing, mnt, append(kms.flags(), "--state-dir", state)...)
	return backing, mnt, m
}

// remount mounts backing at mnt again against the same PyKMIP server with a
// fresh state dir, so every key comes from the KMS.
func remount(t *testing.T, backing, mnt string) *mountProc {
	t.Helper()
	kms := needPyKMIP(t)
	return startMount(t, backing, mnt, append(kms.flags(), "--state-dir", t.TempDir())...)
}

// mkVMDir creates name under mnt, with an encryption policy if encrypted.
func mkVMDir(t *testing.T, mnt, name string, encrypted bool) string {
	t.Helper()
	if !isMounted(mnt) {
		t.Fatalf("%s is not mounted", mnt)
	}
	d := filepath.Join(mnt, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if encrypted {
		encryptDir(t, d)
	}
	return d
}

// hasXattr reports whether path carries the extended attribute name.
func hasXattr(path, name string) bool {
	_, err := unix.Lgetxattr(path, name, nil)
	return err == nil
}

// requireEncryptedBacking fails unless every regular file under dir carries
// the cryptds header xattr and none contains any of needles.
func requireEncryptedBacking(t *testing.T, dir string, needles ...[]byte) {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		n++
		if !hasXattr(p, "user.cryptds.hdr") {
			t.Errorf("backing file %s has no user.cryptds.hdr: stored plain in an encrypted VM dir", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("no backing files under %s", dir)
	}
	for _, nd := range needles {
		searchBacking(t, dir, nd)
	}
}

// requirePlainBacking fails unless every regular file under dir is stored
// plain (no header xattr); if needle is set, some file must contain it.
func requirePlainBacking(t *testing.T, dir string, needle []byte) {
	t.Helper()
	found := false
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		if hasXattr(p, "user.cryptds.hdr") {
			t.Errorf("backing file %s of a plain dir carries user.cryptds.hdr", p)
		}
		if needle != nil && !found {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			found = bytes.Contains(b, needle)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if needle != nil && !found {
		t.Errorf("positive control: plaintext %q not found in the plain backing dir %s", needle[:min(len(needle), 24)], dir)
	}
}

// runCode runs a command with a timeout and returns its combined output and
// exit code (-1 if it could not run or timed out); it never fails the test.
func runCode(timeout time.Duration, dir string, env []string, name string, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case ctx.Err() != nil:
		return string(out) + "\n(timed out after " + timeout.String() + ")", -1
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	return string(out) + "\n" + err.Error(), -1
}

// runIn is run with a working directory and extra environment; it fails the
// test with the combined output on a non-zero exit.
func runIn(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, code := runCode(5*time.Minute, dir, env, name, args...)
	if code != 0 {
		t.Fatalf("%s %s (in %q): exit %d\n%s", name, strings.Join(args, " "), dir, code, out)
	}
	return out
}

// guestImage builds (or takes from the cache) the test guest and returns
// the paths of its kernel and initramfs.
func guestImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	require(t, haveCmd("qemu-system-x86_64"), "qemu-system-x86_64 (qemu-system-x86)")
	require(t, haveCmd("apt-get") && haveCmd("dpkg-deb"), "apt-get and dpkg-deb to fetch the guest kernel")
	out := t.TempDir()
	start := time.Now()
	o, code := runCode(5*time.Minute, "", nil, "../integration/guest/build.sh", out)
	if code != 0 {
		t.Fatalf("guest/build.sh: exit %d\n%s", code, o)
	}
	t.Logf("guest %s ready in %v", strings.TrimSpace(o), time.Since(start).Round(10*time.Millisecond))
	return filepath.Join(out, "vmlinuz"), filepath.Join(out, "initrd.gz")
}

// qemuProc is a running qemu-system-x86_64 (or qemu-io), killed at cleanup.
type qemuProc struct {
	cmd    *exec.Cmd
	out    *syncWriter
	done   chan struct{}
	err    error
	qmpSoc string
}

func startQemu(t *testing.T, name string, args ...string) *qemuProc {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &syncWriter{w: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	q := &qemuProc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() { q.err = cmd.Wait(); close(q.done) }()
	t.Cleanup(func() {
		select {
		case <-q.done:
		default:
			_ = cmd.Process.Kill()
			<-q.done
		}
	})
	return q
}

// wait waits up to d for the process to exit and returns its error; on a
// timeout it kills the process and fails the test.
func (q *qemuProc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-q.done:
		return q.err
	case <-time.After(d):
		_ = q.cmd.Process.Kill()
		<-q.done
		t.Fatalf("%s did not exit within %v; killed\n%s", q.cmd.Path, d, q.out.String())
		return nil
	}
}

func (q *qemuProc) exited() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// guestArgs is the QEMU command line for the test guest with one virtio disk.
func guestArgs(kernel, initrd, drive, serial, appendArgs string, memMiB int) []string {
	return []string{"-accel", "tcg", "-m", strconv.Itoa(memMiB), "-smp", "1", "-nodefaults",
		"-display", "none", "-no-reboot", "-monitor", "none",
		"-serial", "file:" + serial,
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet " + appendArgs,
		"-drive", drive}
}

var tickRE = regexp.MustCompile(`T-TICK (\d+)`)

// lastTick returns the highest T-TICK number in a serial log, or -1.
func lastTick(log string) int {
	best := -1
	for _, m := range tickRE.FindAllStringSubmatch(log, -1) {
		if n, _ := strconv.Atoi(m[1]); n > best {
			best = n
		}
	}
	return best
}

// waitSerial polls the serial log file until cond holds, the process exits
// or the timeout passes; it returns the log.
func waitSerial(t *testing.T, q *qemuProc, path string, d time.Duration, what string, cond func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		if cond(string(b)) {
			return string(b)
		}
		if q.exited() {
			b, _ = os.ReadFile(path)
			if cond(string(b)) {
				return string(b)
			}
			t.Fatalf("QEMU exited (%v) before %s\nqemu output:\n%s\nserial log:\n%s", q.err, what, q.out.String(), b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v\nqemu output:\n%s\nserial log:\n%s", what, d, q.out.String(), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// qmp is a minimal QMP client over a unix socket.
type qmp struct {
	c net.Conn
	r *bufio.Reader
}

// dialQMP connects to QEMU's QMP socket (retrying until it appears) and
// negotiates capabilities.
func dialQMP(t *testing.T, q *qemuProc, sock string) *qmp {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var c net.Conn
	var err error
	for {
		c, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		if q.exited() || time.Now().After(deadline) {
			t.Fatalf("QMP socket %s: %v\nqemu output:\n%s", sock, err, q.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { c.Close() })
	m := &qmp{c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := m.r.ReadBytes('\n'); err != nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	if _, err := m.exec("qmp_capabilities", nil); err != nil {
		t.Fatalf("qmp_capabilities: %v", err)
	}
	return m
}

// exec sends one command and returns its "return" value (events skipped).
func (m *qmp) exec(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	_ = m.c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := m.c.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := m.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("%s: read reply: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("%s: bad reply %q: %w", cmd, line, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("%s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

// must is exec that fails the test on error.
func (m *qmp) must(t *testing.T, cmd string, args any) json.RawMessage {
	t.Helper()
	r, err := m.exec(cmd, args)
	if err != nil {
		t.Fatalf("QMP %v", err)
	}
	return r
}

// hmp runs a human monitor command; HMP reports errors as text.
func (m *qmp) hmp(t *testing.T, line string) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(m.must(t, "human-monitor-command", map[string]any{"command-line": line}), &s); err != nil {
		t.Fatalf("HMP %q: %v", line, err)
	}
	return s
}

// status returns query-status's "status" field.
func (m *qmp) status(t *testing.T) string {
	t.Helper()
	var s struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(m.must(t, "query-status", nil), &s); err != nil {
		t.Fatal(err)
	}
	return s.Status
}

// quit asks QEMU to exit and waits for it.
func (m *qmp) quit(t *testing.T, q *qemuProc) {
	t.Helper()
	_, _ = m.exec("quit", nil)
	_ = q.wait(t, 30*time.Second)
}

// qmpSocketPath is a path for a QMP unix socket. A socket path must be
// shorter than 108 bytes (sun_path), which a subtest's t.TempDir() under a
// per-run TMPDIR is not, so the socket lives in a short directory of its
// own under /tmp, removed with the test.
func qmpSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "qmp.sock")
}
