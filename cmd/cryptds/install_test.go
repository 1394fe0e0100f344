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

// TestMakeDeps runs `make deps` against a fake dpkg-query and apt-get: with
// every package of .ci/packages installed it prints nothing and never calls
// apt-get; with two missing, as root, it runs apt-get update and installs
// exactly those two; not root, it names them and fails only in CI.
func TestMakeDeps(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	b, err := os.ReadFile("../../.ci/packages")
	if err != nil {
		t.Fatal(err)
	}
	var pkgs []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(strings.SplitN(l, "#", 2)[0]); len(f) > 0 {
			pkgs = append(pkgs, f[0])
		}
	}
	for _, want := range []string{"python3-pykmip", "fuse3", "attr", "acl", "xfsprogs", "qemu-utils"} {
		if !slices.Contains(pkgs, want) {
			t.Errorf(".ci/packages lacks %s", want)
		}
	}
	fake := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(fake, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// dpkg-query -W -f=... PKG: installed when PKG is listed in $FAKE_INSTALLED.
	write("dpkg-query", `for p; do :; done; grep -qx "$p" "$FAKE_INSTALLED" && printf 'ii ' || exit 1`+"\n")
	write("apt-get", `echo "apt-get $*" >>"$FAKE_APT"`+"\n")
	write("id", `echo "$FAKE_UID"`+"\n")
	deps := func(installed []string, uid, ci string) (string, string, error) {
		t.Helper()
		list, apt := filepath.Join(t.TempDir(), "installed"), filepath.Join(t.TempDir(), "apt")
		if err := os.WriteFile(list, []byte(strings.Join(installed, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("make", "-s", "-C", "../..", "deps")
		cmd.Env = append(os.Environ(), "PATH="+fake+":"+os.Getenv("PATH"), "FAKE_INSTALLED="+list, "FAKE_APT="+apt, "FAKE_UID="+uid, "CI="+ci)
		out, err := cmd.CombinedOutput()
		calls, _ := os.ReadFile(apt)
		return string(out), string(calls), err
	}
	if out, calls, err := deps(pkgs, "0", ""); err != nil || out != "" || calls != "" {
		t.Errorf("all installed: err %v, output %q, apt-get calls %q; want silence", err, out, calls)
	}
	missing := []string{"python3-pykmip", "xfsprogs"}
	var some, inOrder []string // inOrder: the missing ones, in .ci/packages order
	for _, p := range pkgs {
		if slices.Contains(missing, p) {
			inOrder = append(inOrder, p)
		} else {
			some = append(some, p)
		}
	}
	want := strings.Join(inOrder, " ")
	out, calls, err := deps(some, "0", "")
	if err != nil || !strings.Contains(calls, "apt-get update") ||
		!strings.Contains(calls, "install -y -q --no-install-recommends "+want+"\n") {
		t.Errorf("two missing, as root: err %v, output %q, apt-get calls %q", err, out, calls)
	}
	if out, calls, err := deps(some, "1000", ""); err != nil || calls != "" || !strings.Contains(out, want) {
		t.Errorf("two missing, not root: err %v (want none outside CI), output %q, apt-get calls %q", err, out, calls)
	}
	if _, _, err := deps(some, "1000", "true"); err == nil {
		t.Error("two missing, not root, in CI: make deps succeeded")
	}
}
