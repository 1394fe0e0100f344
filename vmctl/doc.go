// Package vmctl switches the encryption of whole VMs on a mounted cryptds
// datastore on and off: the PowerCLI Enable-VMEncryption /
// Disable-VMEncryption equivalents behind `cryptds vm encrypt|decrypt|list|
// status`.
//
// A VM is a directory directly under the mount root. Its policy is read and
// set through the mount (the user.cryptds.policy virtual xattr); the
// filesystem then encrypts every object created in it. Existing objects are
// converted by copying: an encrypted (or, for decrypt, plain) copy is written
// next to the object through the mount under a temporary name starting with
// TempPrefix, fsync'd, and renamed over the original, and the directory is
// fsync'd. A crash at any moment therefore leaves either the old or the new
// object, never a broken one; the next run removes the leftover temporary
// files and finishes the job.
//
// Whether an object is encrypted is decided by the header xattr of its
// backing file, which this package reads directly from the backing
// directory named by the mount table (our mounts have source
// "cryptds:<backing dir>"). That needs root, as the CLI runs on the
// hypervisor host.
//
// Limits, by design:
//   - Objects with more than one hard link are refused (ErrHardLink): copy
//     and rename would split the link set silently.
//   - Conversion refuses while any process has an object of the VM open for
//     writing (ErrBusy), because writes to the old object after its copy was
//     taken would be lost. Options.Force skips that check (for a false
//     positive, e.g. a log kept open by a monitoring agent), never the check
//     that an object did not change while it was copied (ErrChanged).
//   - Only user.* xattrs are copied, besides mode, owner and times; POSIX
//     ACLs and security.* labels are not.
//
// The package never prints; callers get a Report and Options.Progress
// callbacks.
package vmctl
