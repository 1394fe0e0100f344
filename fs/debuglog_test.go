package fs

import (
	"bytes"
	"strings"
	"testing"
)

// The lines are go-fuse v2.12 request traces (fuse/request.go InputDebug,
// OutputDebug) with payload bytes in them.
func TestRedactPayloads(t *testing.T) {
	tests := []struct {
		line, secret, keep string
	}{
		{`rx 12: WRITE n3 {Fh 1 off 0 sz 11 L 0 RDWR,0x8000} "topsecr"... 11b p123`, "topsecr", "11b"},
		{`rx 13: WRITE n3 {Fh 1 off 0 sz 3 L 0} "abc" 3b p123`, `"abc"`, "3b"},
		{`rx 14: SETXATTR n3 {sz 6 f0} "user.note" "secret" 6b p9`, "secret", `"user.note"`},
		{`tx 15:     OK, 4096b data "plainte"...`, "plainte", "4096b data"},
		{`tx 16:     OK, 5b data "a\"b\\c"`, `a\"b`, "5b data"},
		{`rx 17: LOOKUP n1 ["disk.raw"] 9b p1`, "", `"disk.raw"`},
	}
	for _, tc := range tests {
		got := string(redactPayloads([]byte(tc.line)))
		if tc.secret != "" && strings.Contains(got, tc.secret) {
			t.Errorf("payload %q survives in %q", tc.secret, got)
		}
		if !strings.Contains(got, tc.keep) {
			t.Errorf("%q lost %q: %q", tc.line, tc.keep, got)
		}
	}
}

func TestPayloadRedactorWritesWholeLines(t *testing.T) {
	var buf bytes.Buffer
	w := &payloadRedactor{w: &buf}
	in := "rx 1: WRITE n2 {} \"secret1\"... 100b p1\ntx 1:     OK, 8b data \"secret2\"\n"
	n, err := w.Write([]byte(in))
	if err != nil || n != len(in) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if strings.Contains(buf.String(), "secret") || strings.Count(buf.String(), "\n") != 2 {
		t.Fatalf("redacted output %q", buf.String())
	}
}
