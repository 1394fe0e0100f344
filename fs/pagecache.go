package fs

import (
	"sync"
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
//     write can cache the old bytes again, and the cache outlives the
//     reader's handle, so after a direct write the daemon drops, before
//     replying, every part of the written range it has served to a READ of
//     a buffered handle since the last such drop (dropAfterDirectWrite,
//     servedChunks). Concurrent
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

	served servedChunks // what READs may have cached (dropAfterDirectWrite)
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

// directDropWait bounds how long a direct write waits for the drop of its
// range. The drop waits for page locks of buffered reads in flight, which
// may need a background slot to reach the daemon: with async direct I/O,
// max_background queued writes waiting here would hold every slot, so the
// mount raises max_background far above any I/O depth (maxBackground) and
// the wait is bounded only as a last resort, with a warning: a write that
// replies before its drop completes lets a buffered read return the old
// bytes. A 100 ms bound was reached on a busy two-core host with 16
// writes in flight, and buffered readers then read data older than a
// completed write (TestAsyncDirectWritesAndBufferedReads).
const directDropWait = 10 * time.Second

// dropAfterDirectWrite drops from the cache, after an O_DIRECT write of
// [off, off+size), the parts of the range the daemon has served to READs
// of buffered handles: those may hold the old bytes, cached by a read that
// raced the write after the kernel had dropped the range. Whether a
// buffered handle is open does not matter: the cache outlives it.
func (n *node) dropAfterDirectWrite(off int64, size int) {
	for _, r := range n.cache.served.take(off, size) {
		n.dropDirectRange(r[0], r[1])
	}
}

// dropDirectRange drops [off, off+size) for a direct write, waiting at
// most directDropWait.
func (n *node) dropDirectRange(off, size int64) {
	n.r.stats.cacheDrops.Add(1)
	done := make(chan struct{})
	go func() {
		_ = n.NotifyContent(off, size)
		close(done)
	}()
	t := time.NewTimer(directDropWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		n.r.log.Warn("cryptds: a direct write replies before the page cache dropped its range; buffered readers may see older data",
			"file", n.relPath(), "off", off, "size", size, "waited", directDropWait)
	}
}

// servedChunk is the granularity of servedChunks: one bit per 64 KiB keeps
// the set of a fully read 100 GiB image at 200 KiB.
const servedChunk = 64 << 10

// servedChunks is the set of servedChunk ranges of a file whose data the
// daemon has served to READs of buffered handles (page cache fills, mmap
// faults) since a direct write last dropped them.
type servedChunks struct {
	mu   sync.Mutex
	bits map[uint64]uint64 // chunk/64 -> bit chunk%64
}

// mark records that a READ of [off, off+n) is being served. It is called
// before the backing read, so a direct write that completes after the
// read began finds the mark.
func (s *servedChunks) mark(off int64, n int) {
	if n <= 0 || off < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bits == nil {
		s.bits = map[uint64]uint64{}
	}
	for c := uint64(off) / servedChunk; c <= (uint64(off)+uint64(n)-1)/servedChunk; c++ {
		s.bits[c/64] |= 1 << (c % 64)
	}
}

// take removes the marks of the chunks [off, off+n) touches and returns
// the marked runs of whole chunks as (offset, length) pairs: a mark covers
// its whole chunk, so the whole chunk is dropped with it.
func (s *servedChunks) take(off int64, n int) [][2]int64 {
	if n <= 0 || off < 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var runs [][2]int64
	end := off + int64(n)
	for c := uint64(off) / servedChunk; c <= uint64(end-1)/servedChunk; c++ {
		w, bit := c/64, uint64(1)<<(c%64)
		if s.bits[w]&bit == 0 {
			continue
		}
		if s.bits[w] &^= bit; s.bits[w] == 0 {
			delete(s.bits, w)
		}
		from, to := int64(c*servedChunk), int64(c+1)*servedChunk
		if l := len(runs); l > 0 && runs[l-1][0]+runs[l-1][1] == from {
			runs[l-1][1] = to - runs[l-1][0]
		} else {
			runs = append(runs, [2]int64{from, to - from})
		}
	}
	return runs
}
