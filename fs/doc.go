// Package fs is the cryptds go-fuse node tree: plain objects pass through to
// the backing directory, objects carrying a cryptds header are served
// through encrypting file handles, and VM directories expose their
// encryption policy as virtual xattrs.
//
// # Backing access
//
// Every node holds an O_PATH descriptor of its backing inode, opened from
// its parent's on first use; all backing operations are *at() calls on
// those descriptors or go through /proc/self/fd/N. No absolute path is ever
// built, so names up to NAME_MAX and trees deeper than PATH_MAX work, and a
// concurrent rename cannot redirect an operation.
//
// # Encrypted objects
//
// The backing header xattr (user.cryptds.hdr) decides, never the directory:
// hard links and renames keep their header. An open handle shares its
// inode's objState: the object AEAD (no key lookup per block) and an
// RWMutex (reads shared; writes, truncates and punches exclusive), so no
// reader ever sees a torn block. Writes read-modify-write only their edge
// blocks; before overwriting stored blocks the old ciphertext is kept, and
// if the backing store fails midway (ENOSPC, EIO) it is written back and the
// file cut to its old size, so a failed write may be lost but never leaves
// a block that fails authentication. Backing errnos reach the caller
// unchanged (toErrno is the only error->errno mapping).
//
// New objects are built as O_TMPFILE with both header copies and linked
// under their name only then, so a crash cannot leave a headerless file in
// an encrypted directory. A file with a valid header xattr and a backing
// size of 0 is accepted as an empty object whose region is written on first
// write.
//
// # Kernel interface choices
//
//   - FUSE passthrough is masked off mount-wide; no handle is a LoopbackFile.
//   - O_DIRECT opens get FOPEN_DIRECT_IO (and parallel direct writes for
//     encrypted handles); CAP_ASYNC_DIO is requested. A handle's backing
//     descriptor is buffered (4128-byte stored blocks are not sector
//     aligned); reads of 128 KiB or more, on any handle, widen the stored
//     range to 4 KiB and read it through a second, O_DIRECT descriptor
//     unless cachestat(2) finds it all cached; writes of 128 KiB or more
//     whose stored range is 4 KiB aligned go through it too (directread.go).
//     DIRECT_IO_ALLOW_MMAP lets such handles be mapped shared (Linux 6.6
//     and later; older kernels refuse the mapping with ENODEV).
//   - HANDLE_KILLPRIV_V2 is negotiated, so a buffered write is one request
//     instead of GETXATTR(security.capability) + WRITE; killPrivFS clears
//     suid/sgid where the kernel now leaves it to the daemon.
//   - max_write 1 MiB; large requests are spread over objcrypt's Pool. The
//     mount's read-ahead is raised to 8 MiB through sysfs.
//   - Whole-block writes read no old ciphertext (a failed one punches the
//     block it cut through); writes up to 64 KiB read their backing pages
//     in one request first, because 4128-byte stored blocks cover their
//     first and last page only in part.
//   - Attribute and entry timeouts 1 s, no negative caching: the daemon is
//     the only writer, and 1 s bounds stale attributes after an
//     administrator edits the backing store directly.
//   - Small buffered reads of encrypted files up to 1/16 of RAM read the
//     128 KiB of stored blocks around them into the backing page cache
//     (readaround.go); while no writable handle of the file is open, a
//     goroutine also decrypts that window and stores it into the mount's
//     page cache with FUSE_NOTIFY_STORE (fillaround.go).
//   - The page cache survives writes and opens (explicit data cache control,
//     FOPEN_KEEP_CACHE on every open): an open of a file nobody has open
//     for writing drops it if the backing file changed behind the mount
//     (close-to-open), and O_DIRECT writes drop what of their range the
//     daemon has served to buffered reads (pagecache.go).
//   - statfs block counts are scaled to the plaintext one encrypted file
//     can hold in them (node.go), so df never promises more than fits.
//   - A read-only mount (MountOptions.ReadOnly) is MS_RDONLY and its
//     daemon refuses every change itself (readonly.go): it is not told
//     about remount,rw.
//   - No write-back cache: a write would return before its ciphertext
//     reached the backing store, and a later ENOSPC or EIO would lose it.
//   - Locks are kernel-local (no lock ops): enough for QEMU's OFD image
//     locks on one host, not seen by other mounts of the same backing store.
//
// # Not supported
//
// Fallocate COLLAPSE_RANGE, INSERT_RANGE and UNSHARE_RANGE (the kernel's
// FUSE refuses them, EOPNOTSUPP, before any daemon sees them), lock
// forwarding to the backing store, ioctls (FICLONE, FIEMAP and friends),
// and atime updates from reads (the mount's page cache serves most reads
// without the daemon, and backing files of encrypted objects are opened
// O_NOATIME so the daemon's own header and edge-block reads do not count
// as accesses).
package fs
