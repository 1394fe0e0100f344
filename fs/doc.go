// Package fs is the cryptds go-fuse node tree: plain objects pass through to
// the backing directory, objects carrying a cryptds header are served
// through encrypting file handles, and VM directories expose their
// encryption policy as virtual xattrs.
package fs
