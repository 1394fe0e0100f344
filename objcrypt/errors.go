package objcrypt

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrAuth means an AEAD check failed: tampered or corrupt data, or the
	// wrong key.
	ErrAuth = errors.New("objcrypt: authentication failed")
	// ErrHeader means a header, policy or size is malformed or inconsistent.
	ErrHeader = errors.New("objcrypt: malformed header")
	// ErrVersion means the data was written by a format version or suite this
	// build does not know.
	ErrVersion = errors.New("objcrypt: unsupported format version")
)

// BlockError says which block of an object failed, so a caller can report the
// block number and fail only that read.
type BlockError struct {
	Block uint64 // plaintext block number
	Err   error  // ErrAuth or ErrHeader
}

// Error names the block, so the log line alone locates the damage.
func (e *BlockError) Error() string { return fmt.Sprintf("block %d: %v", e.Block, e.Err) }

// Unwrap lets errors.Is(err, ErrAuth) see through the block number.
func (e *BlockError) Unwrap() error { return e.Err }
