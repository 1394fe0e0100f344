package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ gofs.NodeCreater = (*node)(nil)

// Create makes a new regular file: encrypted when this directory's backing
// directory has a policy, plain otherwise. If the name turns out to exist
// on the backing store (created behind the kernel's back) and O_EXCL was
// not asked for, the existing file is opened like open(2) would.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	defer n.r.opDone(OpCreate, n.r.opStart())
	dfd, pol, err := n.dirAndPolicy()
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	var fd int
	var hdr *objcrypt.Header
	if pol != nil {
		fd, hdr, err = n.r.createEncrypted(ctx, dfd, name, mode, pol)
	} else {
		fd, err = n.createPlain(ctx, dfd, name, flags, mode)
	}
	if errors.Is(err, unix.EEXIST) && flags&syscall.O_EXCL == 0 {
		return n.openExisting(ctx, name, flags, out)
	}
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	ch, err := n.addChild(ctx, dfd, name, out)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, toErrno(err)
	}
	cn, _ := asNode(ch.Operations())
	if hdr == nil {
		fh := n.r.newPlainFile(cn, fd, flags)
		return ch, fh, openFlags(flags, false), 0
	}
	cf, err := cn.newCryptFile(ctx, fd, hdr, flags)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, toErrno(err)
	}
	return ch, cf, openFlags(flags, true), 0
}

// dirAndPolicy returns the backing directory's descriptor and the policy
// new files here get (nil: plain), as the mount's VM record decides
// (vmguard.go), never the backing policy xattr alone.
func (n *node) dirAndPolicy() (int, *objcrypt.Policy, error) {
	dfd, err := n.pathFd()
	if err != nil {
		return -1, nil, err
	}
	pol, err := n.createPolicy(dfd)
	return dfd, pol, err
}

// openExisting is Create's fallback when the backing name already exists.
func (n *node) openExisting(ctx context.Context, name string, flags uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	ch, errno := n.Lookup(ctx, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	cn, _ := asNode(ch.Operations())
	fh, ff, errno := cn.Open(ctx, flags&^uint32(syscall.O_CREAT|syscall.O_EXCL))
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, fh, ff, 0
}

func (n *node) createPlain(ctx context.Context, dfd int, name string, flags, mode uint32) (int, error) {
	fd, err := unix.Openat(dfd, name, backingFlags(flags)|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, fmt.Errorf("create %q: %w", name, err)
	}
	if err := fixNew(ctx, dfd, name, mode|syscall.S_IFREG); err != nil {
		unix.Close(fd)
		unix.Unlinkat(dfd, name, 0)
		return -1, err
	}
	return fd, nil
}

// createEncrypted creates an encrypted object named name in dfd and returns
// a read-write descriptor on it with its header.
//
// Crash ordering: the object is built as an O_TMPFILE (header xattr and
// in-file header region written, owner and mode set) and only then linked
// under its name, so a crash never leaves a named file in an encrypted
// directory without its header (such a file would be served as plain and
// later writes would store plaintext). Where O_TMPFILE is not supported the
// file is created under its name and removed again if the header cannot be
// written. A file with a valid header xattr and a backing size of 0 (no
// region yet, e.g. from other tools) is still accepted as an empty object:
// its region is written on the first write or truncate.
func (r *Root) createEncrypted(ctx context.Context, dfd int, name string, mode uint32, pol *objcrypt.Policy) (int, *objcrypt.Header, error) {
	nh, err := r.newHeader(pol, name)
	if err != nil {
		return -1, nil, err
	}
	fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, mode&07777)
	if err == nil {
		if err := r.fixTmpfile(ctx, dfd, fd, mode); err != nil {
			unix.Close(fd)
			return -1, nil, err
		}
		if err := nh.write(fd); err != nil {
			unix.Close(fd)
			return -1, nil, err
		}
		if err := unix.Linkat(unix.AT_FDCWD, procPath(fd), dfd, name, unix.AT_SYMLINK_FOLLOW); err != nil {
			unix.Close(fd)
			return -1, nil, fmt.Errorf("link new object %q: %w", name, err)
		}
		return fd, nh.hdr, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return -1, nil, fmt.Errorf("create %q: %w", name, err)
	}
	fd, err = unix.Openat(dfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode&07777)
	if err != nil {
		return -1, nil, fmt.Errorf("create %q: %w", name, err)
	}
	err = fixNew(ctx, dfd, name, mode|syscall.S_IFREG)
	if err == nil {
		err = nh.write(fd)
	}
	if err != nil {
		unix.Close(fd)
		unix.Unlinkat(dfd, name, 0)
		return -1, nil, err
	}
	return fd, nh.hdr, nil
}

// newObject is the header of an object about to be created, encoded for
// both copies.
type newObject struct {
	hdr        *objcrypt.Header
	name       string // for messages
	xb, region []byte
}

// newHeader makes the header of a new object of the VM of pol.
func (r *Root) newHeader(pol *objcrypt.Policy, name string) (*newObject, error) {
	id, err := objcrypt.NewObjectID(r.rand)
	if err != nil {
		return nil, err
	}
	nh := &newObject{hdr: pol.NewHeader(id), name: name}
	if nh.xb, err = nh.hdr.MarshalBinary(); err != nil {
		return nil, fmt.Errorf("new header for %q: %w", name, err)
	}
	if nh.region, err = nh.hdr.MarshalRegion(); err != nil {
		return nil, fmt.Errorf("new header region for %q: %w", name, err)
	}
	return nh, nil
}

// write stores both header copies in the new backing file fd.
func (nh *newObject) write(fd int) error {
	if err := unix.Fsetxattr(fd, xattrHeader, nh.xb, 0); err != nil {
		return fmt.Errorf("set header xattr on %q: %w", nh.name, err)
	}
	if err := pwriteFull(fd, nh.region, 0); err != nil {
		return fmt.Errorf("write header region of %q: %w", nh.name, err)
	}
	return nil
}

var _ gofs.NodeTmpfiler = (*node)(nil)

// Tmpfile is open(2) with O_TMPFILE: an unnamed file in this directory,
// encrypted (header written) when the directory has a policy, as Create
// would make it. It gets a name only if the caller links it (linkat with
// AT_EMPTY_PATH or through /proc/self/fd: Link), which O_EXCL forbids, as
// on the backing filesystem. The node keeps an O_PATH descriptor of the
// backing file from the start: it has no name to reopen it by.
func (n *node) Tmpfile(ctx context.Context, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	defer n.r.opDone(OpCreate, n.r.opStart())
	dfd, pol, err := n.dirAndPolicy()
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	acc := backingFlags(flags) &^ unix.O_TMPFILE
	if pol != nil {
		acc = unix.O_RDWR // partial-block writes read back what they change
	}
	fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|acc|int(flags&syscall.O_EXCL)|unix.O_CLOEXEC, mode&07777)
	if err != nil {
		return nil, nil, 0, toErrno(fmt.Errorf("create unnamed file in %s: %w", n.relPath(), err))
	}
	ch, fh, err := n.adoptTmpfile(ctx, dfd, fd, flags, mode, pol, out)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, toErrno(err)
	}
	return ch, fh, openFlags(flags, pol != nil), 0
}

// adoptTmpfile gives the new unnamed backing file fd its owner, mode and
// (pol set) header, and wraps it in an inode and a handle.
func (n *node) adoptTmpfile(ctx context.Context, dfd, fd int, flags, mode uint32, pol *objcrypt.Policy, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, error) {
	if err := n.r.fixTmpfile(ctx, dfd, fd, mode); err != nil {
		return nil, nil, err
	}
	kind := kindPlain
	var nh *newObject
	if pol != nil {
		var err error
		if nh, err = n.r.newHeader(pol, n.relPath()+"/(unnamed)"); err != nil {
			return nil, nil, err
		}
		if err := nh.write(fd); err != nil {
			return nil, nil, err
		}
		kind = kindEncrypted
	}
	var st unix.Statx_t
	if err := statx(fd, "", &st); err != nil {
		return nil, nil, fmt.Errorf("stat unnamed file: %w", err)
	}
	pfd, err := unix.Open(procPath(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("reopen unnamed file: %w", err)
	}
	child := n.r.newNode(kind)
	child.noteDir(n)
	child.pfd.fd = pfd
	child.pfd.pinned = true // unnamed: nothing to find it by again
	n.r.fillAttr(&out.Attr, &st, kind)
	ch := n.NewInode(ctx, child, n.r.stableAttr(&st))
	if nh == nil {
		return ch, n.r.newPlainFile(child, fd, flags), nil
	}
	cf, err := child.newCryptFile(ctx, fd, nh.hdr, flags)
	if err != nil {
		return nil, nil, err
	}
	return ch, cf, nil
}

// fixTmpfile is fixNew for an unnamed O_TMPFILE.
func (r *Root) fixTmpfile(ctx context.Context, dfd, fd int, mode uint32) error {
	if uid, gid, ok := owner(ctx, dfd); ok {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return fmt.Errorf("chown new object: %w", err)
		}
	}
	if inheritsDefaultACL(dfd) {
		return nil // acl.go
	}
	if err := unix.Fchmod(fd, mode&07777); err != nil {
		return fmt.Errorf("chmod new object: %w", err)
	}
	return nil
}

// backingFlags are the open flags used on the backing file: O_APPEND is
// dropped because the kernel already turns appends into writes at the end,
// and O_DIRECT because the mount's O_DIRECT is honoured with FUSE direct
// I/O; the backing file keeps using the backing page cache (ciphertext
// offsets are not sector aligned, and plain files get the same treatment
// for consistency).
func backingFlags(flags uint32) int {
	f := int(flags) &^ (syscall.O_APPEND | syscall.O_DIRECT | syscall.O_CREAT | syscall.O_EXCL |
		syscall.O_NOCTTY | syscall.O_NOFOLLOW | syscall.O_TRUNC | fuse.FMODE_EXEC)
	return f
}

// openFlags are the FOPEN_* flags for a new handle. Every open keeps the
// page cache (pagecache.go drops it when the backing file changed behind
// the mount). O_DIRECT opens get FUSE direct I/O, so they bypass the page
// cache of the mount as QEMU cache=none and fio direct=1 expect.
func openFlags(flags uint32, encrypted bool) uint32 {
	if flags&syscall.O_DIRECT == 0 {
		return fuse.FOPEN_KEEP_CACHE
	}
	ff := uint32(fuse.FOPEN_DIRECT_IO | fuse.FOPEN_KEEP_CACHE)
	if encrypted {
		// Our per-object lock orders writes; the kernel need not
		// serialise direct writes to one file on top of it.
		ff |= fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return ff
}
