package fs

import (
	"context"
	"math"
	"runtime"
	"sync"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Kinds of regular file, decided by the backing header xattr (never by the
// directory): the xattr cannot be set through the mount, so a node's kind
// only changes if an administrator edits the backing store directly.
const (
	kindUnknown = iota
	kindPlain
	kindEncrypted
)

// node is every inode of the mount: directories, regular files (plain or
// encrypted), symlinks, devices, fifos and sockets.
type node struct {
	gofs.Inode
	r   *Root
	pfd *pathFD

	mu   sync.Mutex // guards kind and obj
	kind int
	obj  *objState // open encrypted object, shared by all handles of this inode

	cache cacheGate // the kernel's page cache against changes (pagecache.go)

	// dirs are the directories the node was looked up or created in (one
	// per hard link; guarded by mu): which VM a file belongs to, also once
	// it is unlinked or has no name (O_TMPFILE) (vmguard.go).
	dirs []*node
}

// noteDir records that the node was found in (or created in) directory d.
func (n *node) noteDir(d *node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range n.dirs {
		if x == d {
			return
		}
	}
	n.dirs = append(n.dirs, d)
}

// cnode gives the *node behind any of our InodeEmbedders (node or Root).
func (n *node) cnode() *node { return n }

func (r *Root) newNode(kind int) *node {
	n := &node{r: r, pfd: newPathFD(r.pathFDs), kind: kind}
	runtime.AddCleanup(n, func(p *pathFD) { p.close() }, n.pfd)
	return n
}

func asNode(e gofs.InodeEmbedder) (*node, bool) {
	c, ok := e.(interface{ cnode() *node })
	if !ok {
		return nil, false
	}
	return c.cnode(), true
}

var _ gofs.NodeOnForgetter = (*node)(nil)

// OnForget closes the O_PATH descriptor once the kernel has dropped the inode.
func (n *node) OnForget() { n.pfd.close() }

// relPath is the node's current path relative to the mount root, for logs,
// KEK names and OpenFiles.
func (n *node) relPath() string {
	p := n.Path(nil)
	if p == "" {
		return "."
	}
	return p
}

// kindOf reports whether the regular file is encrypted, probing the backing
// header xattr on first use.
func (n *node) kindOf() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.kind != kindUnknown {
		return n.kind
	}
	fd, err := n.pathFd()
	if err != nil {
		return kindUnknown
	}
	n.kind = probeKind(procPath(fd))
	return n.kind
}

// probeKind looks for the header xattr on a backing regular file.
func probeKind(path string) int {
	if _, err := unix.Getxattr(path, xattrHeader, nil); err == nil || err == unix.ERANGE {
		return kindEncrypted
	}
	return kindPlain
}

// statx stats a backing file relative to dirfd (name "" = dirfd itself).
func statx(dirfd int, name string, st *unix.Statx_t) error {
	flags := unix.AT_SYMLINK_NOFOLLOW | unix.AT_STATX_SYNC_AS_STAT
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	return unix.Statx(dirfd, name, flags, unix.STATX_BASIC_STATS|unix.STATX_BTIME, st)
}

// fillAttr converts a backing stat into the attributes the kernel sees. For
// encrypted files size and blocks are given in plaintext terms: the
// ciphertext size must never leak through Getattr, Lookup or readdirplus,
// or the kernel would read past the plaintext end.
func (r *Root) fillAttr(a *fuse.Attr, st *unix.Statx_t, kind int) {
	a.Ino = r.stableIno(unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino)
	a.Size = st.Size
	a.Blocks = st.Blocks
	a.Atime, a.Atimensec = uint64(st.Atime.Sec), st.Atime.Nsec
	a.Mtime, a.Mtimensec = uint64(st.Mtime.Sec), st.Mtime.Nsec
	a.Ctime, a.Ctimensec = uint64(st.Ctime.Sec), st.Ctime.Nsec
	a.Mode = uint32(st.Mode)
	a.Nlink = st.Nlink
	a.Uid, a.Gid = st.Uid, st.Gid
	a.Rdev = uint32(unix.Mkdev(st.Rdev_major, st.Rdev_minor))
	a.Blksize = st.Blksize
	if kind == kindEncrypted && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		a.Size = plainSizeLenient(st.Size)
		a.Blocks = plainBlocks(st.Blocks)
	}
}

// plainSizeLenient is the plaintext size for attributes. A backing file
// without its header region yet is an empty object; a corrupt size is
// shown as its longest readable prefix (reads past it fail with EIO).
func plainSizeLenient(cipherSize uint64) uint64 {
	if cipherSize < objcrypt.HeaderRegionSize {
		return 0
	}
	if p, err := objcrypt.PlainSizeFromCipher(cipherSize); err == nil {
		return p
	}
	body := cipherSize - objcrypt.HeaderRegionSize
	return body / objcrypt.CipherBlockSize * objcrypt.PlainBlockSize
}

// plainBlocks scales allocated 512-byte sectors from ciphertext to
// plaintext terms: minus the header region, times 4096/4128.
func plainBlocks(sectors uint64) uint64 {
	const regionSectors = objcrypt.HeaderRegionSize / 512
	if sectors <= regionSectors {
		return 0
	}
	s := sectors - regionSectors
	return (s*objcrypt.PlainBlockSize + objcrypt.CipherBlockSize - 1) / objcrypt.CipherBlockSize
}

var _ gofs.NodeLookuper = (*node)(nil)

// Lookup stats name relative to this directory's descriptor.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer n.r.opDone(OpLookup, n.r.opStart())
	dfd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	var st unix.Statx_t
	if err := statx(dfd, name, &st); err != nil {
		return nil, toErrno(err)
	}
	return n.newChild(ctx, dfd, name, &st, out), 0
}

// newChild builds the inode for a backing entry that was just stat'ed (or
// created) and fills out.
func (n *node) newChild(ctx context.Context, dfd int, name string, st *unix.Statx_t, out *fuse.EntryOut) *gofs.Inode {
	kind := kindUnknown
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		kind = probeKind(procPathAt(dfd, name))
	}
	n.r.fillAttr(&out.Attr, st, kind)
	child := n.r.newNode(kind)
	ch := n.NewInode(ctx, child, n.r.stableAttr(st))
	if cn, ok := asNode(ch.Operations()); ok {
		cn.noteDir(n)
		if cn != child {
			// An existing inode won; its kind is authoritative for the attrs.
			n.r.fillAttr(&out.Attr, st, cn.kindOf())
		}
	}
	return ch
}

var _ gofs.NodeGetattrer = (*node)(nil)

// Getattr stats the backing inode through the node's descriptor. While an
// encrypted object is open, the stat is taken under its lock so a
// concurrent write never shows a half-extended ciphertext size.
func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.r.opDone(OpGetattr, n.r.opStart())
	st, kind, err := n.stat()
	if err != nil {
		return toErrno(err)
	}
	n.r.fillAttr(&out.Attr, &st, kind)
	return 0
}

func (n *node) stat() (unix.Statx_t, int, error) {
	var st unix.Statx_t
	fd, err := n.pathFd()
	if err != nil {
		return st, kindUnknown, err
	}
	kind := kindUnknown
	if n.StableAttr().Mode == syscall.S_IFREG {
		kind = n.kindOf()
	}
	if kind == kindEncrypted {
		n.mu.Lock()
		o := n.obj
		n.mu.Unlock()
		if o != nil {
			o.mu.RLock()
			defer o.mu.RUnlock()
		}
	}
	err = statx(fd, "", &st)
	return st, kind, err
}

var _ gofs.NodeStatfser = (*node)(nil)

// Statfs reports the backing filesystem, with its block counts scaled to
// what they hold as plaintext of one encrypted object (plainBlocks): a
// program that sizes a fallocate or a write from statfs (fill the disk to
// just below full) must not get ENOSPC in an encrypted VM. For plain files
// the figures are 0.8 % conservative.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s unix.Statfs_t
	if err := unix.Fstatfs(n.r.pfd.fd, &s); err != nil {
		return toErrno(err)
	}
	bs := uint64(s.Bsize)
	out.Blocks, out.Bfree, out.Bavail = storablePlainBlocks(s.Blocks, bs), storablePlainBlocks(s.Bfree, bs), storablePlainBlocks(s.Bavail, bs)
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize = uint32(s.Bsize), uint32(s.Frsize)
	out.NameLen = uint32(s.Namelen)
	return 0
}

// storablePlainBlocks returns how many blocks of bsize bytes of plaintext an
// encrypted object can store in blocks backing blocks of bsize bytes: one
// header region, then CipherBlockSize stored bytes per PlainBlockSize.
func storablePlainBlocks(blocks, bsize uint64) uint64 {
	if bsize == 0 {
		return 0
	}
	blocks = min(blocks, math.MaxUint64/bsize)
	b := blocks * bsize
	if b <= objcrypt.HeaderRegionSize {
		return 0
	}
	plain := (b - objcrypt.HeaderRegionSize) / objcrypt.CipherBlockSize * objcrypt.PlainBlockSize
	return plain / bsize
}

var _ gofs.NodeReadlinker = (*node)(nil)

// Readlink reads the symlink through its O_PATH descriptor.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	fd, err := n.pathFd()
	if err != nil {
		return nil, toErrno(err)
	}
	for l := 256; ; l *= 2 {
		buf := make([]byte, l)
		sz, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return nil, toErrno(err)
		}
		if sz < len(buf) {
			return buf[:sz], 0
		}
	}
}
