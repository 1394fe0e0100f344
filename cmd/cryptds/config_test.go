package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/keyring"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ds.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runEnv is runCLI with environment variables set for the test.
func runEnv(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	code, _, stderr := runCLI(t, args...)
	return code, stderr
}

// TestConfigRefused: a config file that the mount would have ignored in
// part (a typo'd key) or failed on with a nested error chain (syntax,
// types) is refused with exit 2 and one line naming the file and line,
// and for an unknown key the nearest valid one.
func TestConfigRefused(t *testing.T) {
	cases := []struct {
		name, text string
		want       []string
	}{
		{"typo", "dev = true\nkey-tll = \"12h\"\n", []string{"line 2", `unknown key "key-tll"`, `did you mean "key-ttl"`}},
		{"unknown table", "dev = true\n\n[kms]\nurl = \"x\"\n", []string{"line 3", `unknown key "kms"`, `"kmip"`}},
		{"syntax", "dev = true\nkey-ttl = \n", []string{"line 2", "expected value"}},
		{"integer duration", "key-ttl = 12\n", []string{"line 1", "key-ttl", `"12h"`, "an integer"}},
		{"duration without unit", "key-ttl = \"12\"\n", []string{"line 1", "12h", "30m"}},
		{"negative duration", "\nkey-ttl = \"-1h\"\n", []string{"line 2", "negative", "12h"}},
		{"bool as string", "allow-other = \"yes\"\n", []string{"line 1", "allow-other", "true or false"}},
		{"list of numbers", "kmip = [5696]\n", []string{"line 1", "kmip", "strings"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, c.text)
			for _, cmd := range [][]string{{"mount", "--config", cfg, "/nonexistent/ds", "/nonexistent/mnt"}, {"fsck", "--config", cfg, "/nonexistent/ds"}} {
				code, stderr := runEnv(t, nil, cmd...)
				if code != ExitUsage {
					t.Errorf("%s: exit %d, want %d: %s", cmd[0], code, ExitUsage, stderr)
				}
				if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
					t.Errorf("%s: message is not one line:\n%s", cmd[0], stderr)
				}
				for _, w := range append(c.want, cfg) {
					if !strings.Contains(stderr, w) {
						t.Errorf("%s: message lacks %q: %s", cmd[0], w, stderr)
					}
				}
			}
		})
	}
}

// TestKeyTTLFlag: a negative --key-ttl (flag, env var or file) and a value
// without a unit are usage errors that show the format.
func TestKeyTTLFlag(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"negative flag", nil, []string{"--key-ttl", "-1h"}},
		{"negative env", map[string]string{"CRYPTDS_KEY_TTL": "-30m"}, nil},
		{"no unit", nil, []string{"--key-ttl", "12"}},
		{"no unit in env", map[string]string{"CRYPTDS_KEY_TTL": "12"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{"mount"}, c.args...), "/nonexistent/ds", "/nonexistent/mnt")
			code, stderr := runEnv(t, c.env, args...)
			if code != ExitUsage || !strings.Contains(stderr, "12h") || !strings.Contains(stderr, "30m") {
				t.Errorf("exit %d, want %d with the format (12h, 30m): %s", code, ExitUsage, stderr)
			}
		})
	}
	if d, err := keyringTTL(0); err != nil || d != keyring.TTLNone {
		t.Errorf("--key-ttl 0 is %v, %v; want keyring.TTLNone (no offline use)", d, err)
	}
}

// mountContext is a parsed `cryptds mount` context with default flags, for
// the reloader.
func mountContext(t *testing.T) *cli.Context {
	t.Helper()
	cmd := mountCommand()
	set := flag.NewFlagSet("mount", flag.ContinueOnError)
	for _, f := range cmd.Flags {
		if err := f.Apply(set); err != nil {
			t.Fatal(err)
		}
	}
	c := cli.NewContext(newApp(io.Discard, io.Discard), set, nil)
	c.Command = cmd
	return c
}

// TestReloadConfig: SIGHUP applies key-ttl 0 as no offline use, and a
// file with an unknown key or a negative TTL changes nothing and says
// where the problem is.
func TestReloadConfig(t *testing.T) {
	var set []time.Duration
	newReloader := func(file string) *reloader {
		log, logs, err := newReloadableLogger(io.Discard, "text", false)
		if err != nil {
			t.Fatal(err)
		}
		return &reloader{c: mountContext(t), pinned: map[string]bool{}, file: file, logs: logs, log: log,
			live:      liveSettings{logFormat: "text", keyTTL: defaultKeyTTL},
			setKeyTTL: func(d time.Duration) error { set = append(set, d); return nil }}
	}
	r := newReloader(writeConfig(t, "key-ttl = \"0s\"\n"))
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	if len(set) != 1 || set[0] != keyring.TTLNone || r.live.keyTTL != keyring.TTLNone {
		t.Fatalf("key-ttl 0 reloaded as %v (live %v), want keyring.TTLNone", set, r.live.keyTTL)
	}

	set = nil
	for _, text := range []string{"log-format = \"json\"\nkey-tll = \"1h\"\n", "key-ttl = \"-1h\"\n"} {
		file := writeConfig(t, text)
		r := newReloader(file)
		err := r.reload()
		if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "line") {
			t.Errorf("%q: reload error %v, want one naming the file and line", text, err)
		}
		if len(set) != 0 || r.live.logFormat != "text" || r.live.keyTTL != defaultKeyTTL {
			t.Errorf("%q: a refused reload changed settings: %+v, TTLs set %v", text, r.live, set)
		}
	}
}

// TestFsckAcceptsMountConfig: fsck reads the datastore's mount config
// (README: same KMS flags); its mount-only keys are not unknown to fsck.
func TestFsckAcceptsMountConfig(t *testing.T) {
	cfg := writeConfig(t, "kmip = [\"kms1:5696\"]\nkey-ttl = \"12h\"\nkey-cache = \"disk\"\nallow-other = true\n")
	code, stderr := runEnv(t, nil, "fsck", "--config", cfg, "--no-keys", t.TempDir())
	if code == ExitUsage {
		t.Errorf("fsck refused the mount's config: %s", stderr)
	}
}

// TestShippedConfigIsValid: the example config installed with the binary
// passes the check that refuses unknown keys.
func TestShippedConfigIsValid(t *testing.T) {
	if _, err := checkConfig("../../packaging/cryptds.toml.example", mountFlags()); err != nil {
		t.Fatal(err)
	}
}
