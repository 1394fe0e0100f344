package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// sdNotify sends one sd_notify(3) datagram (e.g. "READY=1") to the socket
// systemd names in NOTIFY_SOCKET; without it (not started by systemd) it
// does nothing. A name starting with '@' is in the abstract namespace.
// The protocol is a single unixgram write, so no library is needed.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %q: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}

// notify is sdNotify with the error logged: a service manager that stopped
// listening must not take the mount down.
func notify(log *slog.Logger, state string) {
	if err := sdNotify(state); err != nil {
		log.Warn("cannot notify the service manager", "err", err)
	}
}

// logControl lets SIGHUP change the log format and level of a running
// daemon: every logger derived from it (the key ring's, fs's) follows.
type logControl struct {
	w     io.Writer
	level slog.LevelVar
	cur   atomic.Pointer[slog.Handler]
}

// newReloadableLogger is newLogger whose format and level can change later
// through the returned logControl.
func newReloadableLogger(w io.Writer, format string, debug bool) (*slog.Logger, *logControl, error) {
	lc := &logControl{w: w}
	if err := lc.set(format, debug); err != nil {
		return nil, nil, err
	}
	return slog.New(&switchHandler{lc: lc}), lc, nil
}

// set switches format and level.
func (lc *logControl) set(format string, debug bool) error {
	opts := &slog.HandlerOptions{Level: &lc.level}
	var h slog.Handler
	switch format {
	case "", "text":
		h = slog.NewTextHandler(lc.w, opts)
	case "json":
		h = slog.NewJSONHandler(lc.w, opts)
	default:
		return withCode(ExitUsage, fmt.Errorf("--log-format %q: want text or json", format))
	}
	if debug {
		lc.level.Set(slog.LevelDebug)
	} else {
		lc.level.Set(slog.LevelInfo)
	}
	lc.cur.Store(&h)
	return nil
}

// switchHandler forwards to the current handler of its logControl,
// replaying the With/WithGroup calls made on it.
type switchHandler struct {
	lc  *logControl
	ops []func(slog.Handler) slog.Handler
}

func (h *switchHandler) current() slog.Handler {
	cur := *h.lc.cur.Load()
	for _, op := range h.ops {
		cur = op(cur)
	}
	return cur
}

func (h *switchHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.lc.level.Level()
}

func (h *switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.current().Handle(ctx, r)
}

func (h *switchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &switchHandler{lc: h.lc, ops: append(slices.Clip(h.ops), func(x slog.Handler) slog.Handler { return x.WithAttrs(as) })}
}

func (h *switchHandler) WithGroup(name string) slog.Handler {
	return &switchHandler{lc: h.lc, ops: append(slices.Clip(h.ops), func(x slog.Handler) slog.Handler { return x.WithGroup(name) })}
}

// liveSettings are the settings a running mount can change on SIGHUP.
type liveSettings struct {
	logFormat string
	debug     bool
	keyTTL    time.Duration
}

// reloader re-reads the --config file on SIGHUP.
type reloader struct {
	c      *cli.Context
	pinned map[string]bool // set by flag or env var: the file cannot override them
	file   string
	logs   *logControl
	log    *slog.Logger
	live   liveSettings
	// setKeyTTL changes the key ring's TTL (keyring.Ring.SetTTL).
	setKeyTTL func(time.Duration) error
}

// reload re-reads the config file, applies what can change live and logs
// the rest as needing a remount. Flags and env vars given at start keep
// precedence over the file, as they do at mount time. A bad file changes
// nothing.
func (r *reloader) reload() error {
	if r.file == "" {
		r.log.Info("reload: no --config file; nothing to re-read")
		return nil
	}
	var flags []cli.Flag
	if r.c.Command != nil {
		flags = r.c.Command.Flags
	}
	m, err := checkConfig(r.file, flags)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	next := r.live
	var applied, ignored, remount []string
	for _, k := range sortedKeys(m) {
		v := m[k]
		if r.pinned[k] {
			ignored = append(ignored, k)
			continue
		}
		switch k {
		case "log-format":
			s, ok := v.(string)
			if !ok {
				return fmt.Errorf("reload %s: log-format must be a string", r.file)
			}
			if s != next.logFormat {
				next.logFormat = s
				applied = append(applied, k)
			}
		case "debug":
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("reload %s: debug must be true or false", r.file)
			}
			if b != next.debug {
				next.debug = b
				applied = append(applied, k)
			}
		case "key-ttl":
			str, ok := v.(string)
			if !ok {
				return fmt.Errorf("reload %s: key-ttl must be a duration string such as \"1h\"", r.file)
			}
			d, err := time.ParseDuration(str)
			if err == nil {
				d, err = keyringTTL(d)
			}
			if err != nil {
				return fmt.Errorf("reload %s: key-ttl %q: want %s", r.file, str, keyTTLFormat)
			}
			if d != next.keyTTL {
				next.keyTTL = d
				applied = append(applied, k)
			}
		default:
			if !sameValue(r.c, k, v) {
				remount = append(remount, k)
			}
		}
	}
	if len(applied) > 0 {
		if err := r.logs.set(next.logFormat, next.debug); err != nil {
			return fmt.Errorf("reload %s: %w", r.file, err)
		}
		if next.keyTTL != r.live.keyTTL && r.setKeyTTL != nil {
			if err := r.setKeyTTL(next.keyTTL); err != nil {
				return fmt.Errorf("reload %s: key-ttl: %w", r.file, err)
			}
		}
		r.live = next
	}
	r.log.Info("config reloaded", "file", r.file, "applied", strings.Join(applied, ","),
		"need_remount", strings.Join(remount, ","), "kept_from_flags_or_env", strings.Join(ignored, ","))
	if len(remount) > 0 {
		r.log.Warn("config changes that take effect only at the next mount", "keys", strings.Join(remount, ","))
	}
	return nil
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// sameValue reports whether the file value v equals what the mount runs
// with. A value of an unexpected type counts as a change.
func sameValue(c *cli.Context, name string, v any) bool {
	switch x := v.(type) {
	case string:
		if d, err := time.ParseDuration(x); err == nil && isDurationFlag(c, name) {
			return d == c.Duration(name)
		}
		if sl := c.StringSlice(name); sl != nil {
			return strings.Join(sl, ",") == x
		}
		return c.String(name) == x
	case bool:
		return c.Bool(name) == x
	case []any:
		var ss []string
		for _, e := range x {
			ss = append(ss, fmt.Sprint(e))
		}
		return strings.Join(ss, ",") == strings.Join(c.StringSlice(name), ",")
	case int64:
		return c.Int(name) == int(x)
	}
	return false
}

func isDurationFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		if slices.Contains(f.Names(), name) {
			switch f.(type) {
			case *altsrc.DurationFlag, *cli.DurationFlag:
				return true
			}
			return false
		}
	}
	return false
}
