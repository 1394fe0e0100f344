package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/pkg/xattr"
	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/objcrypt"
)

// runCLI runs the command line in-process and returns exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"cryptds"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.txt")
	if err := os.WriteFile(plain, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"version", []string{"version"}, ExitOK, ""},
		{"unknown flag", []string{"mount", "--nope", "a", "b"}, ExitUsage, "flag provided but not defined"},
		{"mount without args", []string{"mount"}, ExitUsage, "DATASTORE and MOUNTPOINT"},
		{"mount bad key cache", []string{"mount", "--dev", "--key-cache", "cloud", dir, dir}, ExitUsage, "key-cache"},
		{"mount bad log format", []string{"mount", "--log-format", "xml", dir, dir}, ExitUsage, "log-format"},
		{"mount missing mountpoint", []string{"mount", "--dev", dir, filepath.Join(dir, "nope")}, ExitMount, "mountpoint"},
		{"mount no kms", []string{"mount", dir, t.TempDir()}, ExitUsage, "no key server"},
		{"umount not mounted", []string{"umount", dir}, ExitMount, "not a cryptds mount"},
		{"inspect plain file", []string{"inspect", plain}, ExitNotFound, "not an encrypted object"},
		{"inspect missing file", []string{"inspect", filepath.Join(dir, "nope")}, ExitFailure, "no such file or directory"},
		{"inspect one bad of two", []string{"inspect", plain, filepath.Join(dir, "nope")}, ExitNotFound, "2 of 2 files are not healthy encrypted objects (first: " + plain},
		{"inspect no args", []string{"inspect"}, ExitUsage, "BACKINGFILE"},
		{"kms serve without --dev", []string{"kms", "serve", "--state-dir", dir}, ExitUsage, "--dev"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr, tc.wantErr)
			}
		})
	}
}

// TestInspect writes a real object header (xattr + in-file region) and
// checks inspect reports it, and catches a disagreeing copy.
func TestInspect(t *testing.T) {
	dir := t.TempDir()
	obj := filepath.Join(dir, "disk.raw")
	h := &objcrypt.Header{Version: objcrypt.Version1, Suite: objcrypt.SuiteAES256GCM, KEKID: "kek-42",
		WrappedDEK: make([]byte, objcrypt.WrappedDEKSize)}
	h.ObjectID[0] = 7
	region, err := h.MarshalRegion()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(obj, region, 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := h.MarshalBinary()
	if err := xattr.Set(obj, headerAttr, raw); err != nil {
		t.Skipf("no user xattrs on %s: %v", dir, err)
	}
	code, out, stderr := runCLI(t, "inspect", obj)
	if code != ExitOK || !strings.Contains(out, "kek-42") || !strings.Contains(out, "header copies agree: true") {
		t.Fatalf("inspect: exit %d\n%s%s", code, out, stderr)
	}
	h.KEKID = "kek-43"
	raw, _ = h.MarshalBinary()
	if err := xattr.Set(obj, headerAttr, raw); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCLI(t, "inspect", obj)
	if code != ExitCorrupt || !strings.Contains(out, "disagree") {
		t.Fatalf("disagreeing copies: exit %d\n%s", code, out)
	}
}

// TestEveryCommandDocumented keeps the CLI self-describing: every command has
// a usage line, and every leaf command an example in its description.
func TestEveryCommandDocumented(t *testing.T) {
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := prefix + c.Name
			if c.Usage == "" {
				t.Errorf("%s has no Usage", name)
			}
			if len(c.Subcommands) > 0 {
				walk(name+" ", c.Subcommands)
				continue
			}
			if c.Name != "version" && !strings.Contains(c.Description, "cryptds ") {
				t.Errorf("%s has no example in its Description", name)
			}
			for _, f := range c.Flags {
				if u, ok := f.(cli.DocGenerationFlag); ok && u.GetUsage() == "" {
					t.Errorf("%s flag %v has no usage", name, f.Names())
				}
			}
		}
	}
	walk("", newApp(&bytes.Buffer{}, &bytes.Buffer{}).Commands)
}

// TestREADMEFlagTable checks that every mount flag, its env var and its
// default appear in README.md's table, so the docs cannot drift.
func TestREADMEFlagTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range mountFlags() {
		name := f.Names()[0]
		row := ""
		for _, l := range strings.Split(string(readme), "\n") {
			if strings.HasPrefix(l, "| `--"+name) {
				row = l
			}
		}
		if row == "" {
			t.Errorf("README.md has no row for --%s", name)
			continue
		}
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, e := range ev.GetEnvVars() {
				if !strings.Contains(row, e) {
					t.Errorf("README row for --%s lacks env var %s", name, e)
				}
			}
		}
		if dv, ok := f.(interface{ GetDefaultText() string }); ok {
			if d := dv.GetDefaultText(); d != "" && d != "false" && !strings.Contains(row, strings.Trim(d, `"`)) {
				t.Errorf("README row for --%s lacks default %s: %s", name, d, row)
			}
		}
	}
}

// TestSIGHUPDocsAgree keeps every place that tells an operator what SIGHUP
// changes in step: README, the example config, the unit and the mount
// command's help all name the same keys the reloader applies live.
func TestSIGHUPDocsAgree(t *testing.T) {
	live := []string{"log-format", "debug", "key-ttl"} // liveSettings
	docs := map[string]string{}
	for _, f := range []string{"../../README.md", "../../packaging/cryptds.toml.example", "../../packaging/systemd/cryptds@.service"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[f] = string(b)
	}
	docs["cryptds mount --help"] = mountCommand().Description
	for name, text := range docs {
		// The sentence (or comment line) that mentions SIGHUP and what follows it.
		i := strings.Index(text, "SIGHUP")
		for i >= 0 && !strings.Contains(text[i:min(len(text), i+300)], "at once") {
			j := strings.Index(text[i+1:], "SIGHUP")
			if j < 0 {
				i = -1
				break
			}
			i += 1 + j
		}
		if i < 0 {
			t.Errorf("%s does not say what SIGHUP changes at once", name)
			continue
		}
		// Up to the end of the clause that says "at once".
		span := text[i:]
		span = span[:strings.Index(span, "at once")]
		span = strings.ReplaceAll(span, "\n#", " ")
		for _, k := range live {
			if !strings.Contains(span, k) {
				t.Errorf("%s: what SIGHUP changes at once does not name %s: %q", name, k, span)
			}
		}
	}
}

// TestVersionString: version names the commit and whether the tree was
// modified, from Go's build info or, without it, from what make linked in.
func TestVersionString(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"}, {Key: "vcs.time", Value: "2026-12-07T17:00:00Z"}}}
	clean := &debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "false"}}}
	bare := &debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"}}
	tests := []struct {
		name             string
		bi               *debug.BuildInfo
		commit, modified string
		want             string
	}{
		{"stamped, modified", stamped, "", "", "cryptds (devel) commit 0123abcd (modified) committed 2026-12-07T17:00:00Z (go1.26, format v1)"},
		{"stamped wins over linked", clean, "ffff", "true", "cryptds v1.2.0 commit 0123abcd (go1.26, format v1)"},
		{"linked by make", bare, "89abcdef", "false", "cryptds (devel) commit 89abcdef (go1.26, format v1)"},
		{"linked, modified", bare, "89abcdef", "true", "cryptds (devel) commit 89abcdef (modified) (go1.26, format v1)"},
		{"nothing known", bare, "", "", "cryptds (devel) commit unknown (built without VCS information) (go1.26, format v1)"},
	}
	for _, tc := range tests {
		if got := versionString(tc.bi, tc.commit, tc.modified); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// TestManPageSections: the man page has a real SYNOPSIS (every command),
// and EXIT STATUS, ENVIRONMENT and FILES sections; EXIT STATUS agrees
// with README's exit code table.
func TestManPageSections(t *testing.T) {
	code, page, stderr := runCLI(t, "man")
	if code != 0 {
		t.Fatalf("man: exit %d: %s", code, stderr)
	}
	syn := page[strings.Index(page, ".SH SYNOPSIS"):strings.Index(page, ".SH DESCRIPTION")]
	for _, want := range []string{`cryptds mount [flags] DATASTORE MOUNTPOINT`, `cryptds vm rekey [flags] VMDIR`, `cryptds fsck [flags] DATASTORE`} {
		if !strings.Contains(strings.ReplaceAll(syn, `\-`, "-"), want) {
			t.Errorf("SYNOPSIS lacks %q:\n%s", want, syn)
		}
	}
	if strings.Contains(syn, "[--help|-h]") {
		t.Errorf("SYNOPSIS is still urfave's placeholder:\n%s", syn)
	}
	for _, sec := range []string{".SH EXIT STATUS", ".SH ENVIRONMENT", ".SH FILES"} {
		if !strings.Contains(page, sec+"\n") {
			t.Errorf("man page has no %s section", sec)
		}
	}
	for _, want := range []string{"CRYPTDS_KMIP_CA", "CRYPTDS_KEY_TTL", "NOTIFY_SOCKET", "/etc/cryptds/NAME.toml", "/var/lib/cryptds"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page does not mention %s", want)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exitStatuses {
		row := fmt.Sprintf("| %d | ", e.code)
		if !strings.Contains(string(readme), row) {
			t.Errorf("README's exit code table has no row for %d", e.code)
		}
		if !strings.Contains(page, fmt.Sprintf(".B %d\n%s\n", e.code, e.meaning)) {
			t.Errorf("EXIT STATUS lacks code %d", e.code)
		}
	}
}

// TestLibraryLogs: what libraries log through slog.Default() or Go's log
// package comes out in the command's own format, their chatter only with
// --debug, and a server's read error on a connection it closed itself
// (the dev KMS stopping) never as an ERROR; other errors stay errors.
func TestLibraryLogs(t *testing.T) {
	defer saveLibraryLogs()()
	var buf bytes.Buffer
	if _, err := newLogger(&buf, "json", false); err != nil {
		t.Fatal(err)
	}
	slog.Info("New connection", "addr", "127.0.0.1:1")
	slog.Warn("Shutting down")
	slog.Error("Failed to read data from client", "err", fmt.Errorf("recv: %w", io.ErrClosedPipe))
	log.Printf("a Go log line")
	if buf.Len() != 0 {
		t.Errorf("library chatter shown without --debug:\n%s", buf.String())
	}
	slog.Error("Failed to write HTTP response", "err", errors.New("broken"))
	if !strings.Contains(buf.String(), `"level":"ERROR","msg":"Failed to write HTTP response"`) {
		t.Errorf("a real library error was not logged as an ERROR in JSON:\n%s", buf.String())
	}
	buf.Reset()
	if _, err := newLogger(&buf, "text", true); err != nil {
		t.Fatal(err)
	}
	log.Printf("a Go log line")
	if !strings.HasPrefix(buf.String(), "time=") || !strings.Contains(buf.String(), `level=DEBUG msg="a Go log line"`) {
		t.Errorf("a Go log line with --debug is not in the slog text format:\n%s", buf.String())
	}
}
