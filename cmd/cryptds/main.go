// Command cryptds mounts an encrypting view of a VM datastore and manages
// per-VM encryption. All logic lives in the packages it wires together; see
// README.md for the commands, flags, config file and exit codes.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	if filepath.Base(os.Args[0]) == helperName {
		os.Exit(runMountHelper(os.Args, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line and returns the process exit code. It never
// calls os.Exit itself, so tests can drive it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	defer saveLibraryLogs()()
	app := newApp(stdout, stderr)
	if err := app.RunContext(ctx, args); err != nil {
		fmt.Fprintf(stderr, "cryptds: %v\n", err)
		return exitCode(err)
	}
	return ExitOK
}
