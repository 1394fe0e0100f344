//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// essentialPath makes a directory of links to every program of the
// Debian packages a fresh machine has (Essential or Priority required),
// plus go: the PATH of a newcomer who installed only Go.
func essentialPath(t *testing.T) string {
	t.Helper()
	require(t, haveCmd("dpkg-query"), "dpkg-query (a Debian host)")
	out := run(t, "dpkg-query", "-W", "-f", "${Package}\t${Essential}\t${Priority}\n")
	dir := t.TempDir()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 || (f[1] != "yes" && f[2] != "required") {
			continue
		}
		files, err := exec.Command("dpkg", "-L", f[0]).Output()
		if err != nil {
			continue
		}
		for _, p := range strings.Split(string(files), "\n") {
			d := filepath.Dir(p)
			if d != "/bin" && d != "/usr/bin" && d != "/sbin" && d != "/usr/sbin" {
				continue
			}
			if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				continue
			}
			_ = os.Symlink(p, filepath.Join(dir, filepath.Base(p))) // first one wins
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	return dir + ":" + filepath.Dir(goBin)
}

// TestDemo runs `make demo`'s script as a newcomer would, with only the
// programs of a fresh Debian machine and Go on PATH (no fuse3, attr,
// qemu-utils...), its output piped: it must pass, print no terminal escape
// codes, show stored bytes of the data region beside the same plaintext
// bytes, and report the same VM size for encrypt and decrypt.
func TestDemo(t *testing.T) {
	requireRoot(t)
	path := essentialPath(t)
	for _, absent := range []string{"fusermount3", "setfattr", "qemu-img"} {
		if _, err := os.Stat(filepath.Join(strings.SplitN(path, ":", 2)[0], absent)); err == nil {
			t.Logf("%s is on the essential PATH (part of a required package here)", absent)
		}
	}
	cmd := exec.Command("/bin/bash", "demo.sh")
	cmd.Env = append(os.Environ(), "PATH="+path, "CRYPTDS_BIN="+binary)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("demo did not finish in 5 minutes:\n%s", out)
	}
	text := string(out)
	if err != nil {
		t.Fatalf("demo with only Go and a fresh Debian's programs: %v\n%s", err, text)
	}
	if strings.Contains(text, "\x1b[") {
		t.Errorf("escape codes in piped output:\n%q", text)
	}
	// The data region: plaintext od -c of the mount, then stored bytes
	// from offset 4112 (header region + nonce), not the header magic.
	stored := regexp.MustCompile(`(?m)^\$ od -A d -t x1 -j 4112 -N 32 \S+\n0004112 ((?:[0-9a-f]{2} ){15}[0-9a-f]{2})$`).FindStringSubmatch(text)
	if stored == nil {
		t.Errorf("no dump of the stored data region (offset 4112):\n%s", text)
	} else if strings.HasPrefix(stored[1], "6e 61 6d 65") { // "name": the plaintext
		t.Errorf("the stored data region holds the plaintext: %s", stored[1])
	}
	if !regexp.MustCompile(`(?m)^0000000 +n +a +m +e`).MatchString(text) {
		t.Errorf("no plaintext dump beside the stored bytes:\n%s", text)
	}
	sizes := regexp.MustCompile(`(?m)^(encrypted|decrypted) \S+: (\d+ objects? of \S+ \S+) converted`).FindAllStringSubmatch(text, -1)
	if len(sizes) != 2 {
		t.Fatalf("want one encrypt and one decrypt summary, got %v:\n%s", sizes, text)
	}
	if sizes[0][2] != sizes[1][2] {
		t.Errorf("encrypt reports %q, decrypt %q for the same VM", sizes[0][2], sizes[1][2])
	}
}
