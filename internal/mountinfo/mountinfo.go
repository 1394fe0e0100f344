// Package mountinfo reads the kernel mount table (/proc/self/mountinfo),
// which the CLI and vmctl both consult: to refuse a busy mountpoint, to
// recognise cryptds mounts by their "cryptds:<backing dir>" source, and to
// find a mount's backing directory.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// Entry is one mount: where it is, what was mounted and its type.
type Entry struct {
	Point  string // mount point, octal escapes decoded
	Source string // mount source, e.g. "cryptds:/srv/ds"
	FSType string // e.g. "fuse.cryptds"
}

// Read parses /proc/self/mountinfo.
func Read() ([]Entry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads the mountinfo format; malformed lines are skipped.
func Parse(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 2 {
			continue
		}
		out = append(out, Entry{Point: unescape(lf[4]), FSType: rf[0], Source: unescape(rf[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// unescape decodes the kernel's octal escapes (\040 for a space...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CryptdsSourcePrefix starts the source of every cryptds mount; the rest
// is the backing directory.
const CryptdsSourcePrefix = "cryptds:"

// Containing returns the mount that holds path (absolute, symlinks
// resolved): the entry with the longest mount point that is path or one of
// its parents. Later entries win ties, as the later mount hides the earlier.
func Containing(entries []Entry, path string) (Entry, bool) {
	var best Entry
	found := false
	for _, e := range entries {
		if !within(path, e.Point) {
			continue
		}
		if !found || len(e.Point) >= len(best.Point) {
			best, found = e, true
		}
	}
	return best, found
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}
