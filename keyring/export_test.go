package keyring

import (
	"log/slog"

	"github.com/dgraph-io/badger/v4"
)

// Test hooks. They live in a _test file so they never reach the API.

// EncodeValueForTest is the badger value layout, for the control half of
// the at-rest search test.
func EncodeValueForTest(key []byte, exp int64) []byte { return encodeValue(key, exp) }

// KeyPrefixForTest is the badger key namespace.
const KeyPrefixForTest = keyPrefix

// WaitRefreshes waits for background refreshes started so far. Call it only
// while no other goroutine uses r.
func WaitRefreshes(r *Ring) { r.wg.Wait() }

// Sweep runs the janitor's sweep now.
func Sweep(r *Ring) { r.sweep() }

// PlainBadgerOptionsForTest is the disk cache's badger configuration
// without encryption: the control for the at-rest search.
func PlainBadgerOptionsForTest(dir string) badger.Options {
	return badgerOptions(CacheDisk, dir, nil, slog.New(slog.DiscardHandler))
}
