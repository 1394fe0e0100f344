package objcrypt

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
)

// XattrDatastore names the backing root's xattr that holds its datastore
// id. The format's other xattr names are in XattrHeader and XattrPolicy.
const XattrDatastore = "user.cryptds.datastore"

// Backing xattr names of the format (FORMAT.md §2 and §4).
const (
	XattrHeader = "user.cryptds.hdr"
	XattrPolicy = "user.cryptds.policy"
)

// datastoreIDPrefix and datastoreIDHexLen spell a datastore id:
// "ds-" followed by 16 lower-case hex digits (8 random bytes).
const (
	datastoreIDPrefix = "ds-"
	datastoreIDHexLen = 16
)

// NewDatastoreID returns a fresh random datastore id (rnd nil: crypto/rand).
func NewDatastoreID(rnd io.Reader) (string, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var b [datastoreIDHexLen / 2]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("datastore id: %w", err)
	}
	return datastoreIDPrefix + hex.EncodeToString(b[:]), nil
}

// ParseDatastoreID validates a datastore id read from the backing root.
// The value is hostile (whoever writes the backing store chooses it) and
// becomes a path component of the host's state directory (write journal,
// disk key cache, VM record) and part of every KEK name sent to the KMS, so
// exactly "ds-" and 16 lower-case hex digits are accepted: no separator,
// no dot, no other byte can pass.
func ParseDatastoreID(b []byte) (string, error) {
	if len(b) != len(datastoreIDPrefix)+datastoreIDHexLen || string(b[:len(datastoreIDPrefix)]) != datastoreIDPrefix {
		return "", fmt.Errorf("datastore id %q is not %q and %d lower-case hex digits: %w", b, datastoreIDPrefix, datastoreIDHexLen, ErrHeader)
	}
	for _, c := range b[len(datastoreIDPrefix):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", fmt.Errorf("datastore id %q is not %q and %d lower-case hex digits: %w", b, datastoreIDPrefix, datastoreIDHexLen, ErrHeader)
		}
	}
	return string(b), nil
}

// KEKName is the KMIP Name attribute of a VM's KEKs: every KEK a VM ever
// had carries it, so a KMIP Locate by this name finds them all (shred
// destroys each; a lost id can be found again). Both parts are validated
// values (a datastore id, a VM id in hex), never a path or a name from the
// backing store.
func KEKName(datastoreID string, vm VMID) string {
	return "cryptds/" + datastoreID + "/" + vm.String()
}
