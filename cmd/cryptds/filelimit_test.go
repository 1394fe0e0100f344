package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRaiseOpenFileLimit lowers the test process's limits as a login
// shell might have them, then requires the daemon's start-up to lift them:
// to fs.nr_open with CAP_SYS_RESOURCE, to the hard limit otherwise, with a
// warning when the result is still low.
func TestRaiseOpenFileLimit(t *testing.T) {
	var orig unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &orig) })
	low := unix.Rlimit{Cur: 1024, Max: min(orig.Max, 20000)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	got := raiseOpenFileLimit(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	var now unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &now); err != nil {
		t.Fatal(err)
	}
	if got != now.Cur {
		t.Errorf("returned %d, limit in force %d", got, now.Cur)
	}
	want := low.Max
	if canRaiseHardLimits(t) {
		want = nrOpen()
	}
	if now.Cur != want || now.Max != want {
		t.Errorf("limit %d/%d after raising, want %d/%d", now.Cur, now.Max, want, want)
	}
	if strings.Contains(logs.String(), "open-file limit is low") {
		t.Errorf("raising the limit warned; warnLowFileLimit decides that:\n%s", logs.String())
	}
}

// TestWarnLowFileLimit: the warning comes only when it matters: a low
// limit and a datastore with more entries than half of it.
func TestWarnLowFileLimit(t *testing.T) {
	ds := t.TempDir()
	for i := range 10 {
		if err := os.WriteFile(filepath.Join(ds, strconv.Itoa(i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		limit uint64
		warn  bool
	}{
		{lowFileLimit, false}, // not low
		{1 << 14, false},      // low, but 11 entries are far from half of it
		{22, false},           // 11 entries: exactly half, nothing forgotten yet
		{20, true},            // 11 entries > 10
	}
	for _, tc := range tests {
		var logs bytes.Buffer
		warnLowFileLimit(slog.New(slog.NewTextHandler(&logs, nil)), tc.limit, ds)
		if warned := strings.Contains(logs.String(), "open-file limit is low"); warned != tc.warn {
			t.Errorf("limit %d, 11 entries: warned %v, want %v\n%s", tc.limit, warned, tc.warn, logs.String())
		}
	}
}

// canRaiseHardLimits reports whether the process has CAP_SYS_RESOURCE
// (containers often drop it, even for root).
func canRaiseHardLimits(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	t.Fatal("no CapEff line in /proc/self/status")
	return false
}
