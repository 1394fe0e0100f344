package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
)

// newLogger builds the process logger: text (default) or JSON on stderr.
// It also receives what libraries log (routeLibraryLogs).
func newLogger(w io.Writer, format string, debug bool) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	var l *slog.Logger
	switch format {
	case "", "text":
		l = slog.New(slog.NewTextHandler(w, opts))
	case "json":
		l = slog.New(slog.NewJSONHandler(w, opts))
	default:
		return nil, withCode(ExitUsage, fmt.Errorf("--log-format %q: want text or json", format))
	}
	routeLibraryLogs(l)
	return l, nil
}

// routeLibraryLogs makes l the destination of slog.Default() and of Go's
// log package, which is where libraries log (ovh/kmip-go's KMIP server,
// under the dev KMS, logs every connection there): one format on stderr,
// not two. Their chatter is demoted (libraryHandler). run restores the
// previous destinations when the command returns.
func routeLibraryLogs(l *slog.Logger) {
	slog.SetDefault(slog.New(libraryHandler{l.Handler()}))
}

// saveLibraryLogs returns a function that puts slog's default logger and
// the log package's output back as they are now.
func saveLibraryLogs() (restore func()) {
	prev, out, flags := slog.Default(), log.Writer(), log.Flags()
	return func() {
		slog.SetDefault(prev)
		log.SetOutput(out)
		log.SetFlags(flags)
	}
}

// libraryHandler passes library records to the process handler with their
// level lowered to debug: connection opened and closed, "Shutting down",
// and the read error a server logs for a connection it is closing itself
// (io.ErrClosedPipe, net.ErrClosed) are not the operator's business. Other
// errors stay errors.
type libraryHandler struct{ next slog.Handler }

func (h libraryHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, slog.LevelDebug)
}

func (h libraryHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelError || closingNoise(r) {
		r.Level = slog.LevelDebug
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h libraryHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return libraryHandler{h.next.WithAttrs(as)}
}

func (h libraryHandler) WithGroup(name string) slog.Handler {
	return libraryHandler{h.next.WithGroup(name)}
}

// closingNoise reports whether r's error is a connection closed under the
// reader, which a server logs when it shuts down.
func closingNoise(r slog.Record) bool {
	noise := false
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && (errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed)) {
			noise = true
			return false
		}
		return true
	})
	return noise
}

// openLogFile returns where the daemon logs: stderr when path is empty,
// else path opened for appending (created 0640, its directory too), so a
// mount started by hand does not spill its log into the terminal.
func openLogFile(stderr io.Writer, path string) (io.Writer, func(), error) {
	if path == "" {
		return stderr, func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, withCode(ExitUsage, fmt.Errorf("--log-file %s: %w", path, err))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, withCode(ExitUsage, fmt.Errorf("--log-file %s: %w", path, err))
	}
	return f, func() { _ = f.Close() }, nil
}
