//go:build integration

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stressors are the stress-ng stressors that exercise a filesystem's
// file, directory, xattr, lock and mapping paths; each runs with --verify,
// which makes it check the data it reads back.
var stressors = []string{
	"hdd", "iomix", "fallocate", "seek", "sync-file", "copy-file", "readahead",
	"filename", "dir", "dentry", "link", "rename", "chmod", "utime", "xattr",
	"lockf", "fcntl", "flock", "lease", "mmap", "msync", "fsize", "io",
	"aiol", "sendfile", "splice", "fiemap", "getdent", "open",
}

// TestStressNG runs stress-ng, an exerciser this project did not write,
// in an encrypted and a plain directory of a mount of the real binary.
// Every stressor must pass and the mount must log no authentication
// failure. (It found that files unlinked while open lost fstat,
// ftruncate and fallocate; see TestUnlinkedButOpen in fs.)
func TestStressNG(t *testing.T) {
	requireRoot(t)
	require(t, haveCmd("stress-ng"), "stress-ng (apt-get install stress-ng)")
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	vm := filepath.Join(mnt, "vm")
	plain := filepath.Join(mnt, "plain")
	for _, d := range []string{vm, plain} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	encryptDir(t, vm)
	for _, dir := range []string{vm, plain} {
		for _, s := range stressors {
			t.Run(filepath.Base(dir)+"/"+s, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, "stress-ng", "--"+s, "2", "--timeout", "2s", "--verify",
					"--temp-path", dir, "--oom-avoid")
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if err != nil || strings.Contains(string(out), "fail:") {
					t.Errorf("stress-ng --%s in %s: %v\n%s", s, dir, err, out)
				}
			})
		}
	}
	if strings.Contains(m.stderr.String(), "failed authentication") {
		t.Errorf("the mount logged an authentication failure:\n%s", m.stderr.String())
	}
	m.stop()
}
