package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh"} {
		code, out, stderr := runCLI(t, "completion", sh)
		if code != ExitOK || !strings.Contains(out, "--generate-bash-completion") || !strings.Contains(out, "cryptds") {
			t.Fatalf("completion %s: exit %d\n%s%s", sh, code, out, stderr)
		}
		if _, err := exec.LookPath(sh); err == nil {
			// The script must at least parse in its shell.
			f := t.TempDir() + "/c." + sh
			if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s", sh, err, b)
			}
		}
	}
	if code, _, _ := runCLI(t, "completion", "fish"); code != ExitUsage {
		t.Errorf("completion fish: exit %d, want %d", code, ExitUsage)
	}
	// The protocol the scripts rely on: the binary lists commands and
	// flags. urfave/cli reads os.Args for it, so set them as a shell would.
	complete := func(args ...string) (int, string, string) {
		old := os.Args
		os.Args = append([]string{"cryptds"}, args...)
		defer func() { os.Args = old }()
		return runCLI(t, args...)
	}
	if _, out, _ := complete("--generate-bash-completion"); !strings.Contains(out, "mount\n") || !strings.Contains(out, "completion\n") {
		t.Errorf("command candidates: %q", out)
	}
	if _, out, _ := complete("mount", "--m", "--generate-bash-completion"); !strings.Contains(out, "--metrics-listen") {
		t.Errorf("mount flag candidates: %q", out)
	}
}

func TestManPage(t *testing.T) {
	code, out, stderr := runCLI(t, "man")
	if code != ExitOK {
		t.Fatalf("man: exit %d: %s", code, stderr)
	}
	for _, want := range []string{".TH cryptds 8", "mount", "umount", "completion", "metrics-listen", "allow-other", "Examples"} {
		if !strings.Contains(out, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
}
