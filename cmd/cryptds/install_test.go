package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMakeInstall runs `make install DESTDIR=...` and `make uninstall` and
// checks the exact file list, the helper link and the unit's ExecStart.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	bin := filepath.Join(t.TempDir(), "cryptds")
	make := func(target string) {
		t.Helper()
		cmd := exec.Command("make", "-s", "-C", "../..", target, "DESTDIR="+dest, "BIN="+bin, "PREFIX=/usr")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	list := func() []string {
		var files []string
		filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				files = append(files, strings.TrimPrefix(p, dest))
			}
			return nil
		})
		slices.Sort(files)
		return files
	}
	make("install")
	want := []string{
		"/sbin/mount.fuse.cryptds",
		"/usr/bin/cryptds",
		"/usr/lib/systemd/system/cryptds@.service",
		"/usr/share/bash-completion/completions/cryptds",
		"/usr/share/doc/cryptds/cryptds.toml.example",
		"/usr/share/man/man8/cryptds.8",
		"/usr/share/zsh/site-functions/_cryptds",
	}
	if got := list(); !slices.Equal(got, want) {
		t.Fatalf("installed files:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l, err := os.Readlink(filepath.Join(dest, "sbin/mount.fuse.cryptds")); err != nil || l != "/usr/bin/cryptds" {
		t.Errorf("helper link -> %q (%v), want /usr/bin/cryptds", l, err)
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/cryptds@.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/cryptds mount --config /etc/cryptds/%i.toml") ||
		!strings.Contains(string(unit), "Type=notify") {
		t.Errorf("unit:\n%s", unit)
	}
	// README's systemd section copies the example config into /etc/cryptds.
	if st, err := os.Stat(filepath.Join(dest, "etc/cryptds")); err != nil || !st.IsDir() {
		t.Errorf("make install did not create /etc/cryptds: %v", err)
	}
	// The unit may point only at the man page that exists: cryptds(8).
	for _, ref := range regexp.MustCompile(`cryptds[a-z.-]*\(\d\)`).FindAllString(string(unit), -1) {
		if ref != "cryptds(8)" {
			t.Errorf("unit refers to %s; the only man page installed is cryptds(8)", ref)
		}
	}
	if st, err := os.Stat(filepath.Join(dest, "usr/bin/cryptds")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("binary mode: %v %v", st, err)
	}
	// The binary make built names its commit (whether or not the toolchain
	// stamps VCS information).
	if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		out, err := exec.Command(filepath.Join(dest, "usr/bin/cryptds"), "version").Output()
		if err != nil || !strings.Contains(string(out), "commit "+strings.TrimSpace(string(head))) {
			t.Errorf("cryptds version = %q (%v), want commit %s", out, err, head)
		}
	}
	man, _ := os.ReadFile(filepath.Join(dest, "usr/share/man/man8/cryptds.8"))
	if !strings.HasPrefix(string(man), ".nh\n.TH cryptds 8") {
		t.Errorf("man page starts %q", string(man[:min(len(man), 40)]))
	}
	make("uninstall")
	if got := list(); len(got) != 0 {
		t.Errorf("left after uninstall: %v", got)
	}
	if _, err := os.Stat(filepath.Join(dest, "etc/cryptds")); !os.IsNotExist(err) {
		t.Errorf("empty /etc/cryptds left after uninstall: %v", err)
	}
}
