package main

import (
	"fmt"
	"io"
	"log/slog"
)

// newLogger builds the process logger: text (default) or JSON on stderr.
func newLogger(w io.Writer, format string, debug bool) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, withCode(ExitUsage, fmt.Errorf("--log-format %q: want text or json", format))
	}
}
