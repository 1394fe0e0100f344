package fs

import "sync"

// blockLocks keeps overlapping block ranges of one object apart: readers of
// a range share it, a writer holds its range alone. It is taken under the
// object's RWMutex held shared, by reads and by whole-block writes, so
// those run in parallel when they touch different blocks (QEMU with
// cache=none and fio with iodepth > 1 keep many requests in flight on one
// image) while no reader ever sees a block half rewritten.
type blockLocks struct {
	mu   sync.Mutex
	cond sync.Cond
	held []blockRange
}

type blockRange struct {
	lo, hi uint64 // blocks [lo, hi)
	write  bool
	live   bool
}

func (l *blockLocks) conflicts(lo, hi uint64, write bool) bool {
	for _, h := range l.held {
		if h.live && h.lo < hi && lo < h.hi && (write || h.write) {
			return true
		}
	}
	return false
}

// lock waits until blocks [lo, hi) can be held (shared unless write) and
// returns a token for unlock.
func (l *blockLocks) lock(lo, hi uint64, write bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cond.L == nil {
		l.cond.L = &l.mu
	}
	for l.conflicts(lo, hi, write) {
		l.cond.Wait()
	}
	for i := range l.held {
		if !l.held[i].live {
			l.held[i] = blockRange{lo: lo, hi: hi, write: write, live: true}
			return i
		}
	}
	l.held = append(l.held, blockRange{lo: lo, hi: hi, write: write, live: true})
	return len(l.held) - 1
}

// unlock releases the range lock returned token.
func (l *blockLocks) unlock(token int) {
	l.mu.Lock()
	l.held[token].live = false
	l.mu.Unlock()
	l.cond.Broadcast()
}
