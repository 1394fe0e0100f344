package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/cryptds/cryptds/keyring"
)

// keyTTLFormat is what every --key-ttl error says about the format.
const keyTTLFormat = "a duration such as 12h or 30m, or 0 for no offline use (every open asks the KMS)"

// keyringTTL turns a --key-ttl value into the key ring's TTL: 0 means no
// offline use (keyring.TTLNone), a negative value is a usage error.
func keyringTTL(d time.Duration) (time.Duration, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("--key-ttl %v is negative: want %s", d, keyTTLFormat)
	case d == 0:
		return keyring.TTLNone, nil
	}
	return d, nil
}

// checkKeyTTL refuses a negative --key-ttl however it was given (flag,
// env var, config file), with exit code 2.
func checkKeyTTL(c *cli.Context) error {
	if _, err := keyringTTL(c.Duration("key-ttl")); err != nil {
		return withCode(ExitUsage, err)
	}
	return nil
}

// configError is a problem of the --config file, reported on one line
// with the file and, when known, the line.
type configError struct {
	file string
	line int
	msg  string
}

func (e *configError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("config %s line %d: %s", e.file, e.line, e.msg)
	}
	return fmt.Sprintf("config %s: %s", e.file, e.msg)
}

// checkConfig reads the TOML file path and refuses what the mount would
// otherwise silently ignore or fail on with a nested error: syntax errors,
// keys that are not flag names of flags (naming the nearest one: a typo
// such as key-tll must not mount with the default), and values of the
// wrong type. It returns the decoded file.
func checkConfig(path string, flags []cli.Flag) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &configError{file: path, msg: err.Error()}
	}
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &configError{file: path, line: pe.Position.Line, msg: pe.Message}
		}
		return nil, &configError{file: path, msg: err.Error()}
	}
	byName := map[string]cli.Flag{}
	var names []string
	for _, f := range flags {
		n := f.Names()[0]
		if _, ok := f.(altsrc.FlagInputSourceExtension); !ok || byName[n] != nil {
			continue // not settable from the file (--config itself), or seen
		}
		byName[n] = f
		names = append(names, n)
	}
	for _, k := range sortedKeys(m) {
		f, ok := byName[k]
		if !ok {
			return nil, &configError{file: path, line: keyLine(data, k),
				msg: fmt.Sprintf("unknown key %q (did you mean %q?)", k, nearest(k, names))}
		}
		if msg := typeProblem(f, m[k]); msg != "" {
			return nil, &configError{file: path, line: keyLine(data, k), msg: fmt.Sprintf("%s: %s", k, msg)}
		}
	}
	return m, nil
}

// typeProblem says what is wrong with v as the value of flag f, or "".
func typeProblem(f cli.Flag, v any) string {
	switch f.(type) {
	case *altsrc.BoolFlag:
		if _, ok := v.(bool); !ok {
			return fmt.Sprintf("want true or false, got %s", tomlType(v))
		}
	case *altsrc.StringFlag:
		if _, ok := v.(string); !ok {
			return fmt.Sprintf("want a string, got %s", tomlType(v))
		}
	case *altsrc.DurationFlag:
		s, ok := v.(string)
		if !ok {
			return fmt.Sprintf("want a quoted duration such as \"12h\" or \"30m\", got %s", tomlType(v))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Sprintf("%q is not a duration: want %s", s, keyTTLFormat)
		}
		if d < 0 {
			return fmt.Sprintf("%q is negative: want %s", s, keyTTLFormat)
		}
	case *altsrc.StringSliceFlag:
		switch x := v.(type) {
		case string:
		case []any:
			for _, e := range x {
				if _, ok := e.(string); !ok {
					return fmt.Sprintf("want a list of strings, got an element of type %s", tomlType(e))
				}
			}
		default:
			return fmt.Sprintf("want a list of strings, got %s", tomlType(v))
		}
	}
	return ""
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64:
		return "an integer"
	case float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

// keyLine finds the line of top-level key k (flat files: keys are flag
// names), or of a table header [k]; 0 when not found.
func keyLine(data []byte, k string) int {
	q := regexp.QuoteMeta(k)
	re := regexp.MustCompile(`^\s*(?:` + q + `|"` + q + `"|'` + q + `')\s*=|^\s*\[+\s*(?:` + q + `|"` + q + `")\s*[\].]`)
	for i, l := range strings.Split(string(data), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

// nearest returns the name closest to k by edit distance (ties: the first
// in sorted order).
func nearest(k string, names []string) string {
	sorted := slices.Clone(names)
	sort.Strings(sorted)
	best, bestD := "", -1
	for _, n := range sorted {
		if d := editDistance(k, n); bestD < 0 || d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance with transpositions counted
// as one edit (key-tll is one edit from key-ttl).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// loadConfigBefore is the Before hook of commands that take --config: it
// checks the file (exit 2 on any problem, one line) and then lets altsrc
// apply it under the flags and env vars.
func loadConfigBefore(flags []cli.Flag) cli.BeforeFunc {
	load := altsrc.InitInputSourceWithContext(flags, altsrc.NewTomlSourceFromFlagFunc("config"))
	return func(c *cli.Context) error {
		if p := c.String("config"); p != "" {
			// One file serves a datastore's mount and its fsck (and key
			// commands): the mount's keys are valid in it for all of them.
			if _, err := checkConfig(p, append(mountFlags(), flags...)); err != nil {
				return withCode(ExitUsage, err)
			}
		}
		if err := load(c); err != nil {
			return withCode(ExitUsage, fmt.Errorf("config %s: %w", c.String("config"), err))
		}
		return nil
	}
}
