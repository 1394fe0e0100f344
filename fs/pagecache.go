package fs

// The mount's page cache is kept across writes (explicit data cache
// control).
//
// With the kernel's default (FUSE_AUTO_INVAL_DATA), every read after a
// write through the mount asks GETATTR, sees the modification time the
// write itself changed, and drops the file's whole page cache: a VM disk
// under a mixed load (fio's 70/30 random job) was re-read from the daemon
// almost page by page, at twice the round trips. But every change through
// the mount already reaches the page cache: buffered writes (the page is
// written through), shared mmap, truncate, fallocate PUNCH_HOLE and
// copy_file_range are applied or dropped by the kernel itself. What it
// cannot know about:
//
//   - O_DIRECT writes through another handle (FUSE direct I/O bypasses the
//     cache). The kernel drops the range before sending the write, but a
//     buffered read racing the write can fill it again with the old bytes.
//     So after a direct write, while any buffered handle of the inode is
//     open, the daemon tells the kernel to drop the written range
//     (dropCachedAfterDirectWrite).
//   - Changes made on the backing store behind the mount. Every open still
//     drops the file's cache (no FOPEN_KEEP_CACHE), so they are seen on the
//     next open: close-to-open consistency, as NFS gives. A process that
//     keeps a file open through such a change may read cached old bytes.
//     (Before, the kernel noticed a changed modification time after the
//     one-second attribute timeout; that was never a guarantee either.)
//   - Shred: rekey.go drops the cache of every open object it revokes.
//
// Measured with fio randrw 70/30 (4 KiB, buffered, 10 s, caches dropped):
// 13.0-14.6k -> 36.2-40.0k reads/s (2.7-2.8x) in alternating runs, both with read-around.

// trackHandle counts a new handle of n: buffered handles share the inode's
// page cache, which direct writes must then keep honest.
func (n *node) trackHandle(direct bool) {
	if !direct {
		n.bufferedOpen.Add(1)
	}
}

// untrackHandle undoes trackHandle at release.
func (n *node) untrackHandle(direct bool) {
	if !direct {
		n.bufferedOpen.Add(-1)
	}
}

// dropCachedAfterDirectWrite drops [off, off+size) from the mount's page
// cache after a direct write if a buffered handle of n is open (otherwise
// nobody can read cached pages without a new open, which drops them all).
// It runs on its own goroutine: the notification waits for page locks that
// pending buffered reads and writes of the inode hold, and those may need
// request slots or block locks of this write's handler to finish.
func (n *node) dropCachedAfterDirectWrite(off int64, size int) {
	if size == 0 || n.bufferedOpen.Load() == 0 {
		return
	}
	n.r.stats.cacheDrops.Add(1)
	go n.NotifyContent(off, int64(size))
}
