package fs

import (
	"bytes"
	"io"
	"regexp"
	"sync"
)

// go-fuse's request trace (--fuse-debug) quotes the first bytes of every
// payload: write and read data, xattr values, readlink targets. For an
// encrypted VM that is plaintext, so the trace goes through payloadRedactor,
// which replaces each quoted payload by [payload] and keeps its length.
// File names stay: they are stored in clear on the backing store anyway.
var (
	// rx lines: summarizePayload prints "<up to 8 bytes>"[...] <n>b.
	rxPayload = regexp.MustCompile(`"(?:[^"\\]|\\.)*"(?:\.\.\.)?( \d+b)`)
	// tx lines: "<n>b data" is followed by "<up to 8 bytes>"[...].
	txPayload = regexp.MustCompile(`(\d+b data) "(?:[^"\\]|\\.)*"(?:\.\.\.)?`)
)

// redactPayloads returns a trace line without payload bytes.
func redactPayloads(line []byte) []byte {
	line = rxPayload.ReplaceAll(line, []byte("[payload]$1"))
	return txPayload.ReplaceAll(line, []byte("$1 [payload]"))
}

// payloadRedactor is the io.Writer under go-fuse's debug logger. The
// log package writes one whole line per Write, so lines are redacted as
// they come.
type payloadRedactor struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *payloadRedactor) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		out = append(out, redactPayloads(line)...)
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
