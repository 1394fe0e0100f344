package objcrypt

import (
	"runtime"
	"sync"
)

// DefaultParallelThreshold is the request size (plaintext bytes) from which
// bulk crypto is split over the pool; smaller requests stay inline because
// the hand-off costs more than it saves. Chosen by BenchmarkPool.
const DefaultParallelThreshold = 32 * PlainBlockSize

// Pool is a fixed set of worker goroutines that encrypt or decrypt the
// blocks of large requests in parallel.
type Pool struct {
	workers   int
	minBytes  int
	jobs      chan func()
	closeOnce sync.Once
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
	p := &Pool{workers: workers, minBytes: minBytes, jobs: make(chan func(), workers)}
	for range workers {
		go func() {
			for job := range p.jobs {
				job()
			}
		}()
	}
	return p
}

// Close stops the workers. Requests must not be in flight.
func (p *Pool) Close() { p.closeOnce.Do(func() { close(p.jobs) }) }

// Workers returns the number of worker goroutines.
func (p *Pool) Workers() int { return p.workers }

func (p *Pool) threshold() int { return p.minBytes }

// split runs fn over [0, nBlocks) in about p.workers contiguous chunks and
// returns the first error by block order.
func (p *Pool) split(nBlocks int, fn func(from, to int) error) error {
	chunks := min(p.workers, nBlocks)
	per := (nBlocks + chunks - 1) / chunks
	errs := make([]error, chunks)
	var wg sync.WaitGroup
	for c := range chunks {
		from, to := c*per, min((c+1)*per, nBlocks)
		if from >= to {
			continue
		}
		wg.Add(1)
		p.jobs <- func() {
			defer wg.Done()
			errs[c] = fn(from, to)
		}
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *Pool) encrypt(o *Object, dst, plain []byte, firstBlock uint64) ([]byte, error) {
	nBlocks := (len(plain) + PlainBlockSize - 1) / PlainBlockSize
	n := len(dst)
	out := growTo(dst, n+len(plain)+nBlocks*BlockOverhead)
	err := p.split(nBlocks, func(from, to int) error {
		for i := from; i < to; i++ {
			pb := plain[i*PlainBlockSize : min((i+1)*PlainBlockSize, len(plain))]
			at := n + i*CipherBlockSize
			if _, err := o.EncryptBlock(out[at:at], pb, firstBlock+uint64(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return dst, err
	}
	return out, nil
}

func (p *Pool) decrypt(o *Object, dst, stored []byte, firstBlock uint64) ([]byte, error) {
	nBlocks := (len(stored) + CipherBlockSize - 1) / CipherBlockSize
	last := len(stored) - (nBlocks-1)*CipherBlockSize
	if last <= BlockOverhead {
		// let the inline path produce the precise error for the bad block
		return o.DecryptBlocks(dst, stored, firstBlock, nil)
	}
	n := len(dst)
	out := growTo(dst, n+len(stored)-nBlocks*BlockOverhead)
	err := p.split(nBlocks, func(from, to int) error {
		for i := from; i < to; i++ {
			sb := stored[i*CipherBlockSize : min((i+1)*CipherBlockSize, len(stored))]
			at := n + i*PlainBlockSize
			if _, err := o.DecryptBlock(out[at:at], sb, firstBlock+uint64(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return dst, err
	}
	return out, nil
}

// growTo returns b extended to length n, reallocating only when cap is short.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n)
	copy(nb, b)
	return nb
}
