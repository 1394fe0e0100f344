package fs

import (
	"container/list"
	"sync"

	"golang.org/x/sys/unix"
)

// pathFDLimit keeps the number of O_PATH descriptors nodes hold (pathfd.go)
// under a limit. The kernel keeps an inode, and so its node and descriptor,
// for as long as it caches a dentry for it, which on a large host is for
// every file a backup tool or `ls -l` ever walked: 40,000 files exhausted
// a 20,000-descriptor limit and every later open, lookup and getxattr
// failed with EMFILE. Above the limit the oldest descriptors are given up
// the safe way: the kernel is asked to drop those entries (FUSE entry
// invalidation, from a goroutine of our own, never inside a request), an
// unused inode is then forgotten, and OnForget closes the descriptor as it
// always does. Nothing closes a descriptor a request may be using; an
// entry still in use (an open file) simply stays. Directories are never
// dropped: invalidating a directory entry would also detach anything
// mounted below it, and there are few of them next to files.
type pathFDLimit struct {
	mu   sync.Mutex
	open list.List // non-directory *node holding a descriptor that can be found again by name, oldest first
	// wakeAt is the held count past which added wakes the evictor: the
	// limit, or after a round, another quarter of it beyond what that
	// round left. Forgets arrive later than the round, and entries in use
	// are not forgotten at all, so waking on every add past the limit
	// would send the same invalidations again for each new descriptor.
	wakeAt int
	limit  int
	wake   chan struct{}
}

// pathFDShare is the part of the process's descriptor limit nodes may hold:
// the rest is for file handles (one or two each), directory streams and
// the backing files the daemon opens for its own work.
const pathFDShare = 2

// minPathFDs keeps eviction from churning on a tiny limit.
const minPathFDs = 256

// defaultPathFDLimit is pathFDLimitFor the process's RLIMIT_NOFILE.
func defaultPathFDLimit() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 1 << 14
	}
	return pathFDLimitFor(lim.Cur)
}

// pathFDLimitFor is the share of an open-file limit nodes may hold: half,
// and at least minPathFDs.
func pathFDLimitFor(nofile uint64) int {
	return max(minPathFDs, int(min(nofile, 1<<30))/pathFDShare)
}

func newPathFDLimit(limit int) *pathFDLimit {
	return &pathFDLimit{limit: limit, wakeAt: limit, wake: make(chan struct{}, 1)}
}

// added records that n opened its descriptor and wakes the evictor when
// the limit is passed. The caller holds n.pfd.mu.
func (l *pathFDLimit) added(n *node) {
	l.mu.Lock()
	n.pfd.elem = l.open.PushBack(n)
	over := l.open.Len() > l.wakeAt
	l.mu.Unlock()
	if over {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// removed forgets p's entry (its descriptor was closed or pinned).
func (l *pathFDLimit) removed(p *pathFD) {
	l.mu.Lock()
	if p.elem != nil {
		l.open.Remove(p.elem)
		p.elem = nil
	}
	if l.open.Len() <= l.limit {
		l.wakeAt = l.limit
	}
	l.mu.Unlock()
}

// held is how many descriptors can still be given up.
func (l *pathFDLimit) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open.Len()
}

// oldest returns up to n of the oldest entries for a round and moves them
// to the back, so entries the kernel keeps (in use) do not stop the next
// round from reaching others; the next round waits for another quarter of
// the limit to be added (wakeAt).
func (l *pathFDLimit) oldest(n int) []*node {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*node, 0, min(n, l.open.Len()))
	for e := l.open.Front(); e != nil && len(out) < n; e = l.open.Front() {
		out = append(out, e.Value.(*node))
		l.open.MoveToBack(e)
	}
	l.wakeAt = l.open.Len() + l.limit/4
	return out
}

// evict runs until stop is closed: each time it is woken it asks the
// kernel to drop the oldest entries beyond three quarters of the limit.
func (l *pathFDLimit) evict(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-l.wake:
		}
		excess := l.held() - l.limit*3/4
		if excess <= 0 {
			continue
		}
		for _, n := range l.oldest(excess) {
			if name, parent := n.Parent(); parent != nil {
				parent.NotifyEntry(name) // an error: the mount is going away, or the entry is already gone
			}
		}
	}
}
