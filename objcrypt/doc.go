// Package objcrypt is the cryptds v1 on-disk format: the object header (kept
// both in the user.cryptds.hdr xattr and in a fixed region at the start of the
// backing file), DEK wrapping under a KEK, per-object key derivation, the
// per-block AEAD with its hole rule, all plaintext<->ciphertext offset
// arithmetic, and a worker pool for bulk block crypto.
//
// The package is pure: no FUSE, no network, no file I/O. It imports only the
// standard library and golang.org/x/crypto (enforced by a lint test), so the
// format can be read by any tool without the rest of cryptds.
//
// docs/FORMAT.md is the normative description; every worked example in it is
// a test in this package.
package objcrypt
