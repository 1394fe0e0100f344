package objcrypt

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// chunksPerWorker cuts a request finer than one chunk per worker: whoever
// is running takes the next chunk, so a helper that the scheduler starts
// late still helps instead of running its share after the caller has
// finished (a static split measured only 1.2x on 2 cores).
const chunksPerWorker = 8

// DefaultParallelThreshold is the request size (plaintext bytes) from which
// bulk crypto is split over the pool; smaller requests stay inline because
// the hand-off costs more than it saves. BenchmarkThreshold on this project's
// 2-core machines, with spinning workers: pooled is slower up to 16 blocks
// and 1.3x faster from 32 (docs/BENCHMARKS.md); gocryptfs chose ~32 blocks.
const DefaultParallelThreshold = 32 * PlainBlockSize

// Pool is a fixed set of worker goroutines that encrypt or decrypt the
// blocks of large requests in parallel. One Pool is shared by every open
// file; it is safe for concurrent use. A request is cut into up to
// chunksPerWorker×Workers() contiguous chunks that the calling goroutine
// and up to Workers()-1 helpers take one at a time, so a pool of one worker
// is the same as inline and no goroutine idles while its request is served.
//
// Idle workers spin for spinFor before they park, and parked workers wait
// on a separate wake channel, never on the task queue: a channel hands a
// value straight to a parked receiver, so a worker blocked on the queue
// would take the task ahead of one that is awake, and waking it costs
// ~150 µs on this project's 2-vCPU virtual machines (measured: the helper
// of a 1 MiB request started 133-177 µs late, p10-p90, for a request that
// takes 270 µs on one core).
type Pool struct {
	workers  int
	minBytes int
	queue    chan *poolTask // tasks; only polled, never blocked on
	wake     chan struct{}  // a token per wanted wake-up of a parked worker
	done     chan struct{}  // closed by Close
	spinning atomic.Int32   // workers polling the queue
	batches  sync.Pool      // *poolBatch, so a request allocates nothing

	mu     sync.RWMutex // shared while submitting, exclusive in Close
	closed bool
}

// poolBatch is one request in flight.
type poolBatch struct {
	o       *Object
	encrypt bool
	in, out []byte // out is pre-sized; block i goes to out[base+i*outBlock:]
	base    int
	first   uint64
	nBlocks int
	per     int // blocks per chunk
	chunks  int
	next    atomic.Int32 // next chunk to take
	helping atomic.Int32 // helpers not done yet

	failAt []int   // per chunk: index of the failed block
	errs   []error // per chunk: first error
	tasks  []poolTask
	wg     sync.WaitGroup
}

// poolTask asks a worker to help with batch b.
type poolTask struct {
	b *poolBatch
}

// NewPool starts workers goroutines (<= 0: one per core). Requests below
// minBytes plaintext bytes (<= 0: DefaultParallelThreshold) run inline.
func NewPool(workers, minBytes int) *Pool {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if minBytes <= 0 {
		minBytes = DefaultParallelThreshold
	}
	p := &Pool{
		workers: workers, minBytes: minBytes,
		queue: make(chan *poolTask, workers*workers),
		wake:  make(chan struct{}, workers),
		done:  make(chan struct{}),
	}
	p.batches.New = func() any {
		return &poolBatch{
			failAt: make([]int, workers*chunksPerWorker),
			errs:   make([]error, workers*chunksPerWorker),
			tasks:  make([]poolTask, workers),
		}
	}
	for range workers {
		go p.work()
	}
	return p
}

// spinFor is how long an idle worker keeps polling for the next task
// before it parks: longer than the gap between back-to-back requests of a
// sequential stream, short enough that an idle pool costs nothing.
const spinFor = 50 * time.Microsecond

// work serves tasks until the pool is closed, then finishes what was
// queued before Close.
func (p *Pool) work() {
	for {
		t := p.spin()
		if t == nil {
			select {
			case <-p.wake:
				continue
			case <-p.done:
				select {
				case t = <-p.queue:
				default:
					return
				}
			}
		}
		t.b.drain()
		t.b.helped()
	}
}

// spin polls the queue for up to spinFor. It returns nil if nothing came;
// the worker is then no longer counted as spinning and must park.
func (p *Pool) spin() *poolTask {
	var t *poolTask
	take := func() bool {
		select {
		case t = <-p.queue:
			return true
		default:
			return false
		}
	}
	p.spinning.Add(1)
	pollFor(spinFor, take)
	p.spinning.Add(-1)
	if t == nil {
		// a task queued just before the count dropped found a spinner
		// and sent no wake-up: look once more
		take()
	}
	return t
}

// pollFor calls done until it reports true or d has passed, yielding the
// core to any other runnable goroutine between calls.
func pollFor(d time.Duration, done func() bool) {
	deadline := time.Now().Add(d)
	for i := 0; !done(); i++ {
		if i%8 == 7 && time.Now().After(deadline) {
			return
		}
		runtime.Gosched()
	}
}

// submit queues t and wakes a parked worker if none is spinning. It
// returns false, queueing nothing, when the queue is full: every worker is
// busy with other requests and the caller is better off doing the work.
func (p *Pool) submit(t *poolTask) bool {
	select {
	case p.queue <- t:
	default:
		return false
	}
	if p.spinning.Load() == 0 {
		select {
		case p.wake <- struct{}{}:
		default: // enough wake-ups pending
		}
	}
	return true
}

// Close stops the workers once they have finished the chunks already handed
// to them. Requests made after Close still succeed, inline.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.done)
	}
}

// Workers returns the number of worker goroutines.
func (p *Pool) Workers() int { return p.workers }

func (p *Pool) threshold() int { return p.minBytes }

// helped records that a helper is done with b.
func (b *poolBatch) helped() {
	b.helping.Add(-1)
	b.wg.Done()
}

// waitHelpers waits for the helpers still on their last chunk, polling
// for up to spinFor before it parks: a helper finishes at most one chunk
// after the caller, and parking would add a wake-up to every request.
func (b *poolBatch) waitHelpers() {
	pollFor(spinFor, func() bool { return b.helping.Load() == 0 })
	b.wg.Wait()
}

// drain takes chunks until none is left.
func (b *poolBatch) drain() {
	for {
		c := int(b.next.Add(1)) - 1
		if c >= b.chunks {
			return
		}
		b.run(c)
	}
}

// run does chunk c of the batch, stopping at its first failing block.
func (b *poolBatch) run(c int) {
	from, to := c*b.per, min((c+1)*b.per, b.nBlocks)
	if b.encrypt {
		// one run per chunk: its blocks are contiguous in the output
		at := b.base + from*CipherBlockSize
		pb := b.in[from*PlainBlockSize : min(to*PlainBlockSize, len(b.in))]
		if _, err := b.o.encryptRun(b.out[at:at], pb, b.first+uint64(from)); err != nil {
			b.errs[c], b.failAt[c] = err, from
		}
		return
	}
	for i := from; i < to; i++ {
		var err error
		if b.encrypt {
			pb := b.in[i*PlainBlockSize : min((i+1)*PlainBlockSize, len(b.in))]
			at := b.base + i*CipherBlockSize
			_, err = b.o.EncryptBlock(b.out[at:at], pb, b.first+uint64(i))
		} else {
			sb := b.in[i*CipherBlockSize : min((i+1)*CipherBlockSize, len(b.in))]
			at := b.base + i*PlainBlockSize
			_, err = b.o.DecryptBlock(b.out[at:at], sb, b.first+uint64(i))
		}
		if err != nil {
			b.errs[c], b.failAt[c] = err, i
			return
		}
	}
}

// do runs the batch over the workers and the calling goroutine and returns
// the output: on failure, dst followed by the blocks before the first failed
// one (by block order), exactly as the inline loop would.
func (p *Pool) do(o *Object, encrypt bool, dst, in []byte, nBlocks, outLen int, firstBlock uint64) ([]byte, error) {
	b := p.batches.Get().(*poolBatch)
	chunks := min(p.workers*chunksPerWorker, nBlocks)
	b.o, b.encrypt, b.in, b.first, b.nBlocks = o, encrypt, in, firstBlock, nBlocks
	b.base = len(dst)
	b.out = growTo(dst, b.base+outLen)
	b.per = (nBlocks + chunks - 1) / chunks
	chunks = (nBlocks + b.per - 1) / b.per // no empty chunk
	b.chunks = chunks
	b.next.Store(0)
	clear(b.errs)

	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		b.drain()
	} else {
		helpers := min(p.workers-1, chunks-1)
		b.wg.Add(helpers)
		b.helping.Store(int32(helpers))
		for h := range helpers {
			b.tasks[h] = poolTask{b: b}
			if !p.submit(&b.tasks[h]) {
				b.helped()
			}
		}
		p.mu.RUnlock()
		b.drain()
		b.waitHelpers()
	}

	out, err := b.out, error(nil)
	for c := range chunks {
		if b.errs[c] != nil {
			blk := PlainBlockSize
			if encrypt {
				blk = CipherBlockSize
			}
			out, err = b.out[:b.base+b.failAt[c]*blk], b.errs[c]
			break
		}
	}
	// drop references so a pooled batch keeps no caller memory alive
	b.o, b.in, b.out = nil, nil, nil
	clear(b.errs)
	clear(b.tasks)
	p.batches.Put(b)
	return out, err
}

func (p *Pool) encrypt(o *Object, dst, plain []byte, firstBlock uint64) ([]byte, error) {
	nBlocks := (len(plain) + PlainBlockSize - 1) / PlainBlockSize
	if nBlocks == 0 {
		return dst, nil
	}
	return p.do(o, true, dst, plain, nBlocks, len(plain)+nBlocks*BlockOverhead, firstBlock)
}

func (p *Pool) decrypt(o *Object, dst, stored []byte, firstBlock uint64) ([]byte, error) {
	nBlocks := (len(stored) + CipherBlockSize - 1) / CipherBlockSize
	if nBlocks == 0 {
		return dst, nil
	}
	last := len(stored) - (nBlocks-1)*CipherBlockSize
	if last <= BlockOverhead {
		// let the inline path produce the precise error for the bad block
		return o.DecryptBlocks(dst, stored, firstBlock, nil)
	}
	return p.do(o, false, dst, stored, nBlocks, len(stored)-nBlocks*BlockOverhead, firstBlock)
}

// growTo returns b extended to length n, reallocating only when cap is short.
func growTo(b []byte, n int) []byte {
	return slices.Grow(b, n-len(b))[:n]
}
