// Package keyring is where unwrapped key-encryption keys live on the host: a
// hot in-memory map, a badger-backed cache (in memory by default, encrypted
// on disk when asked) with a TTL per entry, and single-flight fetches from a
// KeySource such as the KMIP client.
//
// Lookup order is hot map, then badger, then the KMS; concurrent misses for
// one key share one fetch. The KMS is never on the I/O path: file handles
// hold their own AEAD, and the ring answers repeated lookups from memory.
//
// Cache modes (--key-cache):
//
//   - memory (default): badger runs in in-memory mode; nothing is written to
//     disk, nothing survives Close, as with vSphere's host-memory keys.
//   - disk: badger on disk, encrypted at rest under a 32-byte host key read
//     from a 0600 file (created on first use), so a remount or reboot works
//     while the KMS is briefly unreachable (vSphere 7 "key persistence").
//   - off: no badger at all. The hot map stays, because dropping it would put
//     the KMS on every file open; keys still live in memory for their TTL.
//
// Lifetimes: an entry expires TTL after the KMS last handed it out. A hit on
// an entry older than Refresh re-fetches it in the background: success
// restarts the TTL (a key in use never expires while the KMS answers), a KMS
// refusal (not found, revoked, destroyed, permission denied) evicts it at
// once, and an outage keeps it serving until its TTL. A key that is neither
// cached nor fetchable fails with a *KeyError naming the key id and the KMS
// endpoints; the same call succeeds once the KMS is back.
//
// Key bytes the ring owns (hot map, in-flight results, the host key) are
// zeroed when evicted, expired or closed, and never logged. Copies inside
// badger's own buffers cannot be wiped; in memory mode they are released to
// the garbage collector at Close.
package keyring
