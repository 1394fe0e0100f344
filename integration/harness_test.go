//go:build integration

// Package integration drives the real cryptds binary against real peers: a
// PyKMIP server, the kernel's FUSE, QEMU, backup tools and fio. Run it with
// `make integration` (root and /dev/fuse needed). In CI (CI set) a missing
// prerequisite fails the run instead of skipping.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/internal/mountinfo"
)

// binary is the cryptds executable under test, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Every temp dir of this run (t.TempDir(), so every mount the tests
	// make) lives under runDir: the leftover check then looks at this
	// run's mounts only, never at a host's own cryptds datastores or at a
	// concurrent run.
	runDir, err := os.MkdirTemp("", "cryptds-it-run-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.Setenv("TMPDIR", runDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binary = os.Getenv("CRYPTDS_BIN")
	if binary == "" {
		binary = filepath.Join(runDir, "cryptds")
		out, err := exec.Command("go", "build", "-o", binary, "../cmd/cryptds").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build cryptds: %v\n%s", err, out)
			return 1
		}
	}
	code := m.Run()
	table, err := mountinfo.Read()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if left := leftoverMounts(table, runDir); len(left) > 0 {
		// Not removed: rm -r through a live mount would reach into it.
		fmt.Fprintf(os.Stderr, "FAIL: mounts left behind: %v\n", left)
		return 1
	}
	os.RemoveAll(runDir)
	return code
}

// require fails (in CI) or skips (elsewhere) when a prerequisite is missing,
// so CI can never pass by skipping.
func require(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("prerequisite missing in CI: %s", what)
	}
	t.Skipf("prerequisite missing: %s", what)
}

func haveCmd(name string) bool { _, err := exec.LookPath(name); return err == nil }

func requireRoot(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/dev/fuse")
	require(t, os.Geteuid() == 0 && err == nil, "root and /dev/fuse")
}

// leftoverMounts lists the mounts of this run still in the mount table:
// those whose mount point is under runDir or whose cryptds source (the
// backing directory) is. Mounts of other datastores are not this run's.
func leftoverMounts(table []mountinfo.Entry, runDir string) []string {
	under := func(p string) bool { return strings.HasPrefix(p, runDir+"/") }
	var out []string
	for _, e := range table {
		backing, isCryptds := strings.CutPrefix(e.Source, mountinfo.CryptdsSourcePrefix)
		if under(e.Point) || (isCryptds && under(backing)) {
			out = append(out, e.Point+" ("+e.Source+")")
		}
	}
	return out
}

// mountProc is a running `cryptds mount`.
type mountProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	backing string
	mnt     string
	stderr  *syncWriter
	exited  chan struct{}
	exitErr error
}

// startMount runs `cryptds mount args... backing mnt` and waits until the
// mount is live (or the process exits).
func startMount(t *testing.T, backing, mnt string, args ...string) *mountProc {
	t.Helper()
	full := append(append([]string{"mount"}, args...), backing, mnt)
	cmd := exec.Command(binary, full...)
	stderr := &syncWriter{w: &bytes.Buffer{}}
	cmd.Stderr, cmd.Stdout = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start cryptds mount: %v", err)
	}
	p := &mountProc{t: t, cmd: cmd, backing: backing, mnt: mnt, stderr: stderr, exited: make(chan struct{})}
	go func() { p.exitErr = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if isMounted(mnt) {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("cryptds mount exited before mounting: %v\n%s", p.exitErr, p.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("mount not ready after 30s\n%s", p.stderr.String())
	return nil
}

// stop unmounts via SIGTERM and waits for a clean exit.
func (p *mountProc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.exitErr != nil {
			p.t.Errorf("cryptds mount exited with %v after SIGTERM\n%s", p.exitErr, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		_ = syscall.Unmount(p.mnt, syscall.MNT_DETACH)
		p.t.Errorf("cryptds mount did not exit 20s after SIGTERM\n%s", p.stderr.String())
	}
}

// kill simulates a crash: SIGKILL. The dead mount stays, as after a real
// crash (every access fails with ENOTCONN); the next cryptds mount of the
// datastore detaches it, and a cleanup does if no test mounts again.
func (p *mountProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.t.Cleanup(func() {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(p.mnt, &fs); errors.Is(err, syscall.ENOTCONN) {
			_ = syscall.Unmount(p.mnt, syscall.MNT_DETACH)
		}
	})
}

func isMounted(mnt string) bool {
	return exec.Command("mountpoint", "-q", mnt).Run() == nil
}

// syncWriter makes a bytes.Buffer safe for the exec goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// run executes a command and fails the test on error, returning stdout.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// dirs makes a fresh backing dir, mountpoint and state dir.
func dirs(t *testing.T) (backing, mnt, state string) {
	t.Helper()
	root := t.TempDir()
	backing, mnt, state = filepath.Join(root, "backing"), filepath.Join(root, "mnt"), filepath.Join(root, "state")
	for _, d := range []string{backing, mnt, state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return
}

// searchBacking fails if any file under dir contains needle.
func searchBacking(t *testing.T, dir string, needle []byte) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			t.Errorf("plaintext %q found in backing file %s", needle[:min(len(needle), 24)], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
