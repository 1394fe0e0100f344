package fs

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The mount's page cache of a regular file survives writes and opens.
//
// With the kernel's default (FUSE_AUTO_INVAL_DATA) every read after a
// write asks GETATTR, sees the modification time the write itself
// changed, and drops the file's whole cache, and every open drops it too:
// a VM disk under a mixed load (fio's 70/30 random job) was re-read from
// the daemon almost page by page, at two round trips a page. Every change
// made through the mount already reaches the cache: a buffered write is
// written through its pages, shared mmap writes back from them, and the
// kernel applies truncate, PUNCH_HOLE and copy_file_range to the cache
// itself. So the mount uses explicit data cache control and every open
// answers FOPEN_KEEP_CACHE. What the kernel cannot know about is handled
// here, each against the one thing that makes dropping pages unsafe: a
// buffered write marks a full page up to date and unlocks it before its
// WRITE reaches the daemon, so a drop while that WRITE is queued, followed
// by a read of the page, caches the old bytes for good. No drop may run
// while the kernel can have such a write in flight, and the kernel can
// write only through a writable handle (gate.writers).
//
//   - Changes behind the mount (an administrator's restore, a tampered
//     block): an open of a file with no writable handle compares the
//     backing file's inode, size, mtime and ctime with what they were when
//     the daemon last knew the cache to be right (the last writable
//     release, or the first open) and drops the cache if they differ:
//     close-to-open consistency, as NFS gives. A change behind the mount
//     while the file is open for writing is not detected (the cryptds
//     datastore has one writer: the mount).
//   - O_DIRECT writes bypass the cache (FUSE direct I/O). The kernel drops
//     the range before sending the write, but a buffered read racing the
//     write can cache the old bytes again, so after a direct write, if a
//     buffered handle was open at any time during it, the daemon drops the
//     written range before replying (dropAfterDirectWrite). Concurrent
//     buffered and O_DIRECT writes to the same pages are left undefined,
//     as open(2) warns for every Linux filesystem.
//   - Cache fills (fillaround.go) store pages only while no writable
//     handle is open; shred (rekey.go) blocks the gate for good, then
//     drops everything.

// cacheGate orders what the daemon puts into or drops from the kernel's
// cache of one file against the changes that make that unsafe.
type cacheGate struct {
	mu      sync.Mutex
	idle    sync.Cond // signalled when busy drops to false
	writers int       // writable handles open, and revocations (never undone)
	busy    bool      // a fill or a drop is in flight
	filled  []uint64  // bitmap of fillWindow windows stored since the last open
	stamp   backingStamp
	stamped bool // stamp was taken: the cache is known to match it

	buffered atomic.Int32  // handles without O_DIRECT open now
	opens    atomic.Uint64 // handles without O_DIRECT ever opened
}

// backingStamp is what a change behind the mount alters on the backing
// file. ctime cannot be set back by anyone but the clock.
type backingStamp struct {
	dev, ino, size uint64
	mtime, ctime   unix.Timespec
}

func stampOf(fd int) backingStamp {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return backingStamp{} // never matches a real stamp: the cache is dropped
	}
	return backingStamp{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim, ctime: st.Ctim}
}

// cacheOpened registers a new handle of n on backing descriptor fd. It drops
// the cache if the backing file changed behind the mount, and a writable
// handle keeps drops and fills out until it is released.
func (n *node) cacheOpened(fd int, writable, direct bool) {
	g := &n.cache
	if !direct {
		g.opens.Add(1)
		g.buffered.Add(1)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waitIdleLocked()
	clear(g.filled)
	if g.writers == 0 {
		st := stampOf(fd)
		if g.stamped && st != g.stamp {
			g.stamp = st
			n.dropCacheLocked()
		}
		g.stamp, g.stamped = st, true
	}
	if writable {
		g.writers++
	}
}

// dropCacheLocked drops n's whole cache; n.cache.mu is held. It releases
// the lock while the kernel drops (the drop waits for pages locked by
// reads in flight, whose handlers may need the gate) and keeps fills and
// writable opens out with busy meanwhile.
func (n *node) dropCacheLocked() {
	g := &n.cache
	g.busy = true
	g.mu.Unlock()
	_ = n.NotifyContent(0, 0)
	n.r.stats.cacheDrops.Add(1)
	g.mu.Lock()
	g.busy = false
	g.idle.Broadcast()
}

// cacheReleased undoes cacheOpened for a handle on fd. The last writable
// handle records the backing file as the cache now matches it.
func (n *node) cacheReleased(fd int, writable, direct bool) {
	g := &n.cache
	if !direct {
		g.buffered.Add(-1)
	}
	if !writable {
		return
	}
	g.mu.Lock()
	g.writers--
	if g.writers == 0 {
		g.stamp, g.stamped = stampOf(fd), true
	}
	g.mu.Unlock()
}

// block keeps drops and fills out for good (shred), after any in flight.
func (g *cacheGate) block() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.writers++
	g.waitIdleLocked()
}

// waitIdleLocked waits, g.mu held, until no fill or drop is in flight.
func (g *cacheGate) waitIdleLocked() {
	g.idle.L = &g.mu // the zero gate is ready to use; Wait needs L
	for g.busy {
		g.idle.Wait()
	}
}

// directWriteWatch is taken before an O_DIRECT write: whether a buffered
// handle may read the range while it is written.
type directWriteWatch struct {
	open  bool
	opens uint64
}

func (n *node) watchDirectWrite() directWriteWatch {
	return directWriteWatch{open: n.cache.buffered.Load() > 0, opens: n.cache.opens.Load()}
}

// directDropWait bounds how long a direct write waits for the drop of its
// range. The drop waits for page locks of buffered reads in flight; with
// async direct I/O, enough queued writes waiting here could hold every
// background slot such a read needs to reach the daemon. After the wait
// the write replies and the drop completes on its own.
const directDropWait = 100 * time.Millisecond

// dropAfterDirectWrite drops [off, off+size) from the cache after an
// O_DIRECT write, if a buffered handle was open at any time since w was
// taken: its reads may have cached the old bytes after the kernel dropped
// the range.
func (n *node) dropAfterDirectWrite(w directWriteWatch, off int64, size int) {
	g := &n.cache
	if size == 0 || !w.open && g.buffered.Load() == 0 && g.opens.Load() == w.opens {
		return
	}
	n.r.stats.cacheDrops.Add(1)
	done := make(chan struct{})
	go func() {
		_ = n.NotifyContent(off, int64(size))
		close(done)
	}()
	t := time.NewTimer(directDropWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
