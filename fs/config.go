package fs

import (
	"context"
	"io"
	"log/slog"

	"github.com/cryptds/cryptds/objcrypt"
)

// Keys is what fs needs from the keyring. fs defines it itself so the node
// tree never imports the keyring or anything that talks to a KMS
// (keyring.Ring implements it).
type Keys interface {
	// KEK returns a caller-owned copy of the KEK with the given KMS id; the
	// caller zeroes it when done. An error that wraps a syscall.Errno is
	// reported to the FUSE caller with that errno, anything else as EIO.
	KEK(ctx context.Context, id string) (objcrypt.Key, error)
	// NewKEK creates a KEK in the KMS under name and returns its id.
	NewKEK(ctx context.Context, name string) (id string, err error)
}

// KeyLocator is the optional part of Keys that finds every KEK the KMS
// holds under a name (shred uses it to find a VM's KEKs from before
// earlier rekeys; keyring.Ring implements it when its source can).
type KeyLocator interface {
	LocateKEKs(ctx context.Context, name string) ([]string, error)
}

// Config is everything the node tree needs, built once by the mount command.
type Config struct {
	// Backing is the backing directory; it must support user xattrs.
	Backing string
	// Keys fetches and creates KEKs.
	Keys Keys
	// Pool spreads large requests over worker goroutines; nil keeps all
	// block crypto inline.
	Pool *objcrypt.Pool
	// Logger receives one line per notable event (key errors, failed
	// authentication, header mismatches); nil discards.
	Logger *slog.Logger
	// DatastoreID names this datastore in KEK names:
	// "cryptds/<DatastoreID>/<vm dir relative path>".
	DatastoreID string
	// KMSName is recorded in new policies (informational only).
	KMSName string
	// Rand supplies nonces, object ids, VM ids and DEKs; nil means
	// crypto/rand. Tests inject a deterministic source.
	Rand io.Reader
	// Observe, when set, is called with the duration of each lookup,
	// getattr, open, create, read, write and fsync (metrics); nil costs
	// nothing.
	Observe Observer
	// ReadAroundLimit is the largest stored file size for which small
	// buffered reads also read their neighbours (readaround.go): 0 means
	// 1/16 of the machine's memory, a negative value never.
	ReadAroundLimit int64
	// MaxPathFDs bounds the O_PATH descriptors the node tree keeps
	// (pathlimit.go); 0 means half of RLIMIT_NOFILE.
	MaxPathFDs int
	// VMRecordPath is the file that records this datastore's encrypted
	// VMs (vmreg): it belongs to this host's state directory, never to the
	// backing store. Empty: the record lives in memory for the mount's life.
	VMRecordPath string
	// JournalPath is the file that records the block writes in flight, so
	// that a killed daemon leaves no block half written (journal.go); it
	// belongs to this datastore and this host. Empty: no journal.
	JournalPath string
}
