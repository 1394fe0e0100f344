//go:build integration

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// walkthrough returns the shell commands of README.md's walkthrough: every
// ```sh block between the <!-- walkthrough --> markers, in order.
func walkthrough(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- walkthrough -->")
	section, _, ok2 := strings.Cut(rest, "<!-- /walkthrough -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- walkthrough --> ... <!-- /walkthrough --> section")
	}
	var cmds []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1) {
		cmds = append(cmds, strings.Split(strings.TrimRight(block[1], "\n"), "\n")...)
	}
	if len(cmds) < 10 {
		t.Fatalf("the walkthrough has only %d commands", len(cmds))
	}
	return cmds
}

// TestREADMEWalkthrough runs README's walkthrough as written, in one bash
// with -e, with /srv, /mnt and /backup moved under a temporary directory
// and the binary under test as cryptds. It must succeed; the daemon's log
// must go to its --log-file, not the terminal; fsck must find the
// datastore clean before and after the ciphertext restore; the restored
// plaintext backup must be encrypted.
func TestREADMEWalkthrough(t *testing.T) {
	requireRoot(t)
	require(t, haveCmd("getfattr") && haveCmd("setfattr"), "getfattr/setfattr (attr)")
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(binary, filepath.Join(bin, "cryptds")); err != nil {
		t.Fatal(err)
	}
	move := strings.NewReplacer("/srv/", root+"/srv/", "/mnt/", root+"/mnt/", "/backup", root+"/backup")
	var script strings.Builder
	script.WriteString("set -euo pipefail\nset -x\n")
	for _, c := range walkthrough(t) {
		script.WriteString(move.Replace(c) + "\n")
	}
	t.Cleanup(func() { stopWalkthroughDaemon(root) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(root, "srv", "cryptds-dev.log"))
		t.Fatalf("the walkthrough failed: %v\n%s\ndaemon log:\n%s", err, text, log)
	}
	t.Logf("walkthrough output:\n%s", text)
	log, err := os.ReadFile(filepath.Join(root, "srv", "cryptds-dev.log"))
	if err != nil || !strings.Contains(string(log), "msg=mounted") || !strings.Contains(string(log), "msg=unmounted") {
		t.Errorf("--log-file has no mounted/unmounted lines (%v):\n%s", err, log)
	}
	if strings.Contains(text, "msg=mounted") {
		t.Errorf("the daemon's log spilled into the terminal:\n%s", text)
	}
	if n := strings.Count(text, ": clean: "); n != 2 {
		t.Errorf("fsck said clean %d times, want 2 (before and after the ciphertext restore):\n%s", n, text)
	}
	if !strings.Contains(text, "web01-before-rekey") && !regexp.MustCompile(`clean: \d+ objects`).MatchString(text) {
		t.Errorf("no fsck summary:\n%s", text)
	}
	if !regexp.MustCompile(`(?m)^vm: +web01-copy\nstate: +encrypted`).MatchString(text) {
		t.Errorf("the restored plaintext backup is not an encrypted VM:\n%s", text)
	}
}

// stopWalkthroughDaemon ends a daemon the walkthrough left running (after
// a failure): SIGTERM to every cryptds mount of root's datastore, then a
// lazy unmount.
func stopWalkthroughDaemon(root string) {
	mnt := filepath.Join(root, "mnt", "datastore")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "mount") || !strings.Contains(string(b), mnt) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	time.Sleep(time.Second)
	if isMounted(mnt) {
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}
