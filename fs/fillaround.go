package fs

// Small reads of encrypted files that nobody can write fill the mount's
// page cache around them.
//
// Read-around (readaround.go) makes a random miss cheap on the backing
// side, but the kernel still asks for one page per FUSE request, so a
// buffered random reader pays a round trip for every page of the file. A
// file with no writable handle open (a base image shared by linked clones,
// a VM disk read by a backup agent or an analysis tool, fio randread)
// cannot change while it stays so, and then the daemon may hand the kernel
// more than it asked for: after a small read, a goroutine decrypts the
// fillWindow-aligned window around it and stores it into the kernel's
// cache with FUSE_NOTIFY_STORE. Later reads in that window are page-cache
// hits.
//
// Storing pages is only correct while their content cannot change, so the
// node's cache gate (pagecache.go) orders fills against every change:
//
//   - Opening a writable handle (and so every write, truncate, fallocate,
//     copy_file_range and shared writable mmap, which all need one) waits
//     for a fill in flight and forbids new ones until the last writable
//     handle is released.
//   - Shred marks the object revoked, waits for a fill in flight, forbids
//     new ones for good, and only then drops the cache (rekey.go).
//   - A fill never waits for anything a change holds: it takes the object
//     and block locks only to read and decrypt, and stores after releasing
//     them. The store waits for page locks of reads in flight, which finish
//     on their own.
//
// A window is filled at most once per open (pages stored earlier may have
// been evicted since); a fill in flight makes other misses skip filling
// rather than queue. Fills follow the read-around size limit: the file
// must fit comfortably in the page cache, or the pages stored would be
// evicted before use.
const fillWindow = 128 << 10

// start claims window w for a fill, unless a change forbids fills, a fill
// is already in flight, or w was stored since the last open.
func (g *cacheGate) start(w uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	word, bit := w/64, uint64(1)<<(w%64)
	if g.writers > 0 || g.busy || word < uint64(len(g.filled)) && g.filled[word]&bit != 0 {
		return false
	}
	if word >= uint64(len(g.filled)) {
		g.filled = append(g.filled, make([]uint64, word+1-uint64(len(g.filled)))...)
	}
	g.filled[word] |= bit
	g.busy = true
	return true
}

// done ends the fill in flight.
func (g *cacheGate) done() {
	g.mu.Lock()
	g.busy = false
	g.idle.Broadcast()
	g.mu.Unlock()
}

// fillAround starts filling the window around a small read of [off,
// off+n) that just succeeded, if the file qualifies and the read did not
// cover all of the window the file has (a small file read whole).
func (f *cryptFile) fillAround(off uint64, n int, psize, csize uint64) {
	if f.direct || n == 0 || n >= fillWindow || csize > f.r.readAroundLimit {
		return
	}
	w := off / fillWindow
	if off == w*fillWindow && off+uint64(n) >= min((w+1)*fillWindow, psize) {
		return
	}
	if !f.n.cache.start(w) {
		return
	}
	f.fills.Add(1)
	go func() {
		defer f.fills.Done()
		defer f.n.cache.done()
		f.fillWindowAt(w, off, off+uint64(n))
	}()
}

// fillWindowAt decrypts window w and stores it in the kernel's cache,
// except [skipOff, skipEnd): the pages of the read that asked, which the
// kernel holds locked until that read's reply.
func (f *cryptFile) fillWindowAt(w, skipOff, skipEnd uint64) {
	start := w * fillWindow
	pb := f.r.bufs.get(fillWindow)
	defer f.r.bufs.put(pb)
	f.o.mu.RLock()
	if f.o.revoked.Load() {
		f.o.mu.RUnlock()
		return
	}
	tok := f.o.blocks.lock(start/bs, (start+fillWindow)/bs, false)
	n, err := f.readBlocks((*pb)[:fillWindow], start, false)
	f.o.blocks.unlock(tok)
	f.o.mu.RUnlock()
	if err != nil || n == 0 {
		return
	}
	data := (*pb)[:n]
	end := start + uint64(n)
	skipOff, skipEnd = max(skipOff, start), min(skipEnd, end)
	if skipOff > start {
		f.n.WriteCache(int64(start), data[:skipOff-start])
	}
	if skipEnd < end {
		f.n.WriteCache(int64(skipEnd), data[skipEnd-start:])
	}
	f.r.stats.cacheFills.Add(1)
}
