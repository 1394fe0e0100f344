// Package keyring is where unwrapped key-encryption keys live on the host: a
// hot in-memory map, a badger-backed cache (in memory by default, encrypted
// on disk when asked) with a TTL per entry, and single-flight fetches from a
// KeySource such as the KMIP client.
package keyring
