// Package devkms is a small KMIP server for demos and tests, built on
// ovh/kmip-go's kmipserver. It is NOT a production key server: keys are
// stored unencrypted in a file in its state directory, there is no HSM, no
// replication, no audit log and no access policy beyond "a key belongs to
// the CN of the client certificate that created it".
//
// It implements exactly what cryptds's kmipclient uses — DiscoverVersions,
// Query, Create (AES), Activate, Get, GetAttributes, Locate by name, Revoke
// and Destroy — with the result reasons PyKMIP gives, so one client test
// suite runs against both. It listens on loopback only, requires and
// verifies client certificates, and on first start creates its own CA, a
// server certificate for 127.0.0.1/::1/localhost and a client certificate
// (CN "cryptds") in the state directory; later starts reuse them and the
// keys.
//
// The library's server logs connection events through slog.Default(); the
// Logger in Config receives this package's own events.
package devkms
