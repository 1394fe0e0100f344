package fs

import "golang.org/x/sys/unix"

// Default ACLs are applied by the backing filesystem: the daemon creates
// every entry with the mode the kernel asked for, and a backing directory
// with a default ACL gives the new entry that ACL, its permission bits
// derived from the mode and the ACL (the daemon's umask ignored), as it
// would for a local caller. fixNew and fixTmpfile must then leave the mode
// alone: setting the mode asked for would widen the entry past its ACL.
//
// The kernel strips the caller's umask before the daemon sees the mode
// (the mount does not negotiate FUSE_POSIX_ACL), so where a default ACL
// grants more than the umask allows the entry gets less than on ext4,
// never more.

// xattrACLDefault is the default ACL of a directory.
const xattrACLDefault = "system.posix_acl_default"

// inheritsDefaultACL reports whether entries created in the backing
// directory dfd take their permissions from its default ACL.
func inheritsDefaultACL(dfd int) bool {
	sz, err := unix.Getxattr(procPath(dfd), xattrACLDefault, nil)
	return err == nil && sz > 0
}
