package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// Exit codes are an API (README.md "Exit codes"); scripts branch on them.
const (
	ExitOK       = 0 // success
	ExitFailure  = 1 // anything not listed below
	ExitUsage    = 2 // bad arguments or flags
	ExitMount    = 3 // the mountpoint or datastore is unusable (missing, busy, not empty, no xattrs, already mounted)
	ExitKMS      = 4 // the key server could not be reached or refused us
	ExitCorrupt  = 5 // fsck/inspect found corruption
	ExitNotFound = 6 // the path is not what the command needs (not a VM, not encrypted...)
)

// exitStatuses says what each exit code means, for the man page's EXIT
// STATUS section; README's "Exit codes" table says the same (checked by a
// test).
var exitStatuses = []struct {
	code    int
	meaning string
}{
	{ExitOK, "success (fsck: clean; warnings may be listed)"},
	{ExitFailure, "any other failure"},
	{ExitUsage, "bad arguments or flags"},
	{ExitMount, "mountpoint or datastore unusable: missing, not empty, already mounted, inside the datastore; fsck or inspect given a path on a cryptds mount; busy"},
	{ExitKMS, "the key server could not be reached or refused us"},
	{ExitCorrupt, "corruption found (inspect, fsck)"},
	{ExitNotFound, "the path is not what the command needs (not a VM, not encrypted, already encrypted, not an encrypted object)"},
}

// codedError attaches an exit code to an error without hiding it from
// errors.Is/As.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// withCode marks err with an exit code; nil stays nil.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// exitCode finds the code of the outermost coded error. urfave's own exit
// errors (only "No help topic for 'X'" for an unknown command, which it
// gives code 3) are usage errors: 3 means an unusable mount here.
func exitCode(err error) int {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ExitUsage
	}
	return ExitFailure
}
