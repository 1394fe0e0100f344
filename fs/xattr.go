package fs

import (
	"bytes"
	"context"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Extended attributes pass through to the backing inode (via
// /proc/self/fd/N of the node's descriptor), except the user.cryptds.*
// namespace, which is cryptds's own: the real header and policy xattrs are
// hidden and cannot be set or removed through the mount, so no guest or
// user can make a plain file pose as encrypted. Directories offer three
// virtual attributes: user.cryptds.policy (read/write),
// user.cryptds.status and user.cryptds.keystate (read-only, keystate.go). They are not listed, so copying a tree
// with xattrs (rsync -X) does not try to set them on the destination.

func isOurs(attr string) bool { return strings.HasPrefix(attr, xattrPrefix) }

func (n *node) isDir() bool { return n.StableAttr().Mode == syscall.S_IFDIR }

// copyXattr implements the getxattr size protocol for a value we computed.
func copyXattr(val []byte, dest []byte) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(val)), 0
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

var _ gofs.NodeGetxattrer = (*node)(nil)

// Getxattr passes through, serving the virtual policy/status attributes on
// directories and hiding every other user.cryptds.* attribute.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	fd, err := n.pathFd()
	if err != nil {
		return 0, toErrno(err)
	}
	if isOurs(attr) {
		if !n.isDir() {
			return 0, syscall.ENODATA
		}
		switch attr {
		case xattrPolicy:
			return copyXattr([]byte(n.r.policyText(n, fd)), dest)
		case xattrKeys:
			s, err := n.r.keysText(n, fd)
			if err != nil {
				return 0, toErrno(err)
			}
			return copyXattr([]byte(s), dest)
		case xattrStatus:
			s, err := statusText(fd)
			if err != nil {
				return 0, toErrno(err)
			}
			return copyXattr([]byte(s), dest)
		case xattrKeyState:
			s, err := n.r.keyStateText(ctx, n, fd)
			if err != nil {
				return 0, toErrno(err)
			}
			return copyXattr([]byte(s), dest)
		}
		return 0, syscall.ENODATA
	}
	sz, err := unix.Getxattr(procPath(fd), attr, dest)
	return uint32(sz), toErrno(err)
}

var _ gofs.NodeSetxattrer = (*node)(nil)

// Setxattr passes through; user.cryptds.* is refused with EPERM except
// user.cryptds.policy on a directory.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	fd, err := n.pathFd()
	if err != nil {
		return toErrno(err)
	}
	if isOurs(attr) {
		if attr == xattrPolicy && n.isDir() {
			return toErrno(n.r.setPolicy(ctx, n, fd, data))
		}
		return syscall.EPERM
	}
	return toErrno(unix.Setxattr(procPath(fd), attr, data, int(flags)))
}

var _ gofs.NodeRemovexattrer = (*node)(nil)

// Removexattr passes through; user.cryptds.* is refused with EPERM
// (remove a policy by setting it to "none").
func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if isOurs(attr) {
		return syscall.EPERM
	}
	fd, err := n.pathFd()
	if err != nil {
		return toErrno(err)
	}
	return toErrno(unix.Removexattr(procPath(fd), attr))
}

var _ gofs.NodeListxattrer = (*node)(nil)

// Listxattr passes through with user.cryptds.* filtered out.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	fd, err := n.pathFd()
	if err != nil {
		return 0, toErrno(err)
	}
	buf := make([]byte, 4096)
	var sz int
	for {
		sz, err = unix.Listxattr(procPath(fd), buf)
		if err == nil {
			break
		}
		if err != unix.ERANGE || len(buf) >= 1<<20 {
			return 0, toErrno(err)
		}
		buf = make([]byte, 4*len(buf))
	}
	var out []byte
	for _, name := range bytes.Split(buf[:sz], []byte{0}) {
		if len(name) == 0 || isOurs(string(name)) {
			continue
		}
		out = append(out, name...)
		out = append(out, 0)
	}
	return copyXattr(out, dest)
}
