package objcrypt

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestPoolDefaults(t *testing.T) {
	p := NewPool(0, 0)
	defer p.Close()
	if p.Workers() != runtime.GOMAXPROCS(0) || p.threshold() != DefaultParallelThreshold {
		t.Fatalf("NewPool(0, 0): %d workers, threshold %d", p.Workers(), p.threshold())
	}
	q := NewPool(5, 4096)
	defer q.Close()
	if q.Workers() != 5 || q.threshold() != 4096 {
		t.Fatalf("NewPool(5, 4096): %d workers, threshold %d", q.Workers(), q.threshold())
	}
}

// TestBulkErrorPosition: with or without a pool, a bad block is reported by
// number, the first one wins, and the blocks before it are returned.
func TestBulkErrorPosition(t *testing.T) {
	v := newTestVM(t, "pos")
	o, _ := v.newObject(t, "pos-obj")
	const nBlocks = 41
	plain := randPlain("pos", nBlocks*PlainBlockSize-100)
	stored, err := o.EncryptBlocks(nil, plain, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, pc := range testPools(t) {
		for _, bad := range [][]int{{0}, {1}, {13}, {20, 21}, {39, 2}, {40}} {
			t.Run(fmt.Sprintf("%s/%v", pc.name, bad), func(t *testing.T) {
				s := bytes.Clone(stored)
				first := bad[0]
				for _, b := range bad {
					s[b*CipherBlockSize+NonceSize+7] ^= 0x80
					first = min(first, b)
				}
				got, err := o.DecryptBlocks([]byte("p"), s, 10, pc.pool)
				mustBlockErr(t, err, uint64(10+first), ErrAuth)
				if len(got) != 1+first*PlainBlockSize || !bytes.Equal(got[1:], plain[:first*PlainBlockSize]) {
					t.Fatalf("returned %d bytes, want p + the %d good blocks before the bad one", len(got), first)
				}
			})
		}
		t.Run(pc.name+"/short tail", func(t *testing.T) {
			for _, tail := range []int{1, BlockOverhead} {
				s := append(bytes.Clone(stored[:3*CipherBlockSize]), make([]byte, tail)...)
				s[len(s)-1] = 1
				_, err := o.DecryptBlocks(nil, s, 10, pc.pool)
				mustBlockErr(t, err, 13, ErrHeader)
			}
		})
	}
}

func TestPoolEncryptErrorPosition(t *testing.T) {
	v := newTestVM(t, "encpos")
	id, _ := NewObjectID(newDetReader("encpos"))
	// a reader that fails after n nonces (serialised: the pool calls it concurrently)
	o, err := NewObject(v.dek, id, &failAfter{n: 10 * NonceSize})
	if err != nil {
		t.Fatal(err)
	}
	p := NewPool(1, 1) // one worker: the calling goroutine does everything, in order
	defer p.Close()
	// Nonces are read per chunk, in batches of up to nonceBatch: the chunk
	// whose read fails is not encrypted; whole blocks before it (at most
	// the 10 whose nonces exist) are returned, in order, and decrypt.
	got, err := o.EncryptBlocks([]byte("p"), make([]byte, 20*PlainBlockSize), 0, p)
	if !errors.Is(err, errNoEntropy) || (len(got)-1)%CipherBlockSize != 0 || len(got) > 1+10*CipherBlockSize {
		t.Fatalf("EncryptBlocks = %d bytes, %v; want p + at most 10 whole blocks, errNoEntropy", len(got), err)
	}
	if plain, err := o.DecryptBlocks(nil, got[1:], 0, nil); err != nil || len(plain) != (len(got)-1)/CipherBlockSize*PlainBlockSize {
		t.Fatalf("returned blocks do not decrypt: %d bytes, %v", len(plain), err)
	}
	o2, err := NewObject(v.dek, id, &failAfter{n: (nonceBatch + 3) * NonceSize})
	if err != nil {
		t.Fatal(err)
	}
	got, err = o2.EncryptBlocks([]byte("p"), make([]byte, (nonceBatch+10)*PlainBlockSize), 0, nil)
	if !errors.Is(err, errNoEntropy) || len(got) != 1+nonceBatch*CipherBlockSize {
		t.Fatalf("EncryptBlocks = %d bytes, %v; want p + one batch of %d blocks, errNoEntropy", len(got), err, nonceBatch)
	}
}

type failAfter struct {
	mu sync.Mutex
	n  int
}

func (f *failAfter) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n < len(p) {
		return 0, errNoEntropy
	}
	f.n -= len(p)
	clear(p)
	p[0] = 1 // never a hole
	return len(p), nil
}

// TestPoolConcurrent runs many requests at once through one pool (run it
// with -race).
func TestPoolConcurrent(t *testing.T) {
	v := newTestVM(t, "conc")
	p := NewPool(4, 2*PlainBlockSize)
	defer p.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, _ := v.newObject(t, fmt.Sprint("conc", g))
			for i := range 20 {
				plain := randPlain(fmt.Sprint(g, i), (g*7919+i*104729)%(40*PlainBlockSize))
				dst := make([]byte, 0, CipherSizeFromPlain(uint64(len(plain))))
				s, err := o.EncryptBlocks(dst, plain, uint64(i), p)
				if err != nil {
					errs <- err
					return
				}
				back, err := o.DecryptBlocks(nil, s, uint64(i), p)
				if err != nil || !bytes.Equal(back, plain) {
					errs <- fmt.Errorf("goroutine %d request %d: %v", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestPoolHandOff: round trips stay exact whether the helpers are awake
// (back-to-back requests), parked (pauses longer than spinFor) or all
// busy (more callers than the queue holds, so callers work alone).
func TestPoolHandOff(t *testing.T) {
	v := newTestVM(t, "handoff")
	for _, c := range []struct {
		name             string
		workers, callers int
		pause            time.Duration
	}{
		{"awake", 2, 1, 0},
		{"parked", 2, 1, 3 * spinFor},
		{"queue full", 2, 32, 0},
		{"many workers parked", 8, 4, 3 * spinFor},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := NewPool(c.workers, 1)
			defer p.Close()
			var wg sync.WaitGroup
			for g := range c.callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					o, _ := v.newObject(t, fmt.Sprint(c.name, g))
					for i := range 10 {
						plain := randPlain(fmt.Sprint(c.name, g, i), (i+1)*17*PlainBlockSize+i)
						s, err := o.EncryptBlocks(nil, plain, uint64(i), p)
						if err != nil {
							t.Error(err)
							return
						}
						if back, err := o.DecryptBlocks(nil, s, uint64(i), p); err != nil || !bytes.Equal(back, plain) {
							t.Errorf("caller %d request %d: round trip failed: %v", g, i, err)
							return
						}
						time.Sleep(c.pause)
					}
				}()
			}
			wg.Wait()
		})
	}
}

func TestPoolClose(t *testing.T) {
	v := newTestVM(t, "close")
	o, _ := v.newObject(t, "close-obj")
	p := NewPool(2, 1)
	plain := randPlain("close", 10*PlainBlockSize)
	var wg sync.WaitGroup
	for range 4 { // requests racing with Close must all succeed
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				s, err := o.EncryptBlocks(nil, plain, 0, p)
				if err != nil {
					t.Error(err)
					return
				}
				if back, err := o.DecryptBlocks(nil, s, 0, p); err != nil || !bytes.Equal(back, plain) {
					t.Error("round trip through a closing pool failed:", err)
					return
				}
			}
		}()
	}
	p.Close()
	wg.Wait()
	p.Close() // idempotent
	if s, err := o.EncryptBlocks(nil, plain, 0, p); err != nil || len(s) != 10*CipherBlockSize {
		t.Fatalf("request after Close: %v", err)
	}
}

// TestZeroAllocs: no allocation per block in the steady state (issue 2).
// Timing is for benchmarks; this asserts only the allocation count.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items; allocation counts are meaningless")
	}
	v := newTestVM(t, "alloc")
	o, _ := v.newObject(t, "alloc-obj")
	p := NewPool(0, 0)
	defer p.Close()
	block := randPlain("b", PlainBlockSize)
	stored, _ := o.EncryptBlock(nil, block, 0)
	hole := make([]byte, CipherBlockSize)
	big := randPlain("big", 1<<20)
	bigStored, _ := o.EncryptBlocks(nil, big, 0, nil)
	cbuf := make([]byte, 0, len(bigStored))
	pbuf := make([]byte, 0, len(big))
	tests := []struct {
		name string
		f    func()
	}{
		{"EncryptBlock", func() { _, _ = o.EncryptBlock(cbuf[:0], block, 1) }},
		{"DecryptBlock", func() { _, _ = o.DecryptBlock(pbuf[:0], stored, 0) }},
		{"DecryptBlock hole", func() { _, _ = o.DecryptBlock(pbuf[:0], hole, 0) }},
		{"EncryptBlocks 1MiB inline", func() { _, _ = o.EncryptBlocks(cbuf[:0], big, 0, nil) }},
		{"DecryptBlocks 1MiB inline", func() { _, _ = o.DecryptBlocks(pbuf[:0], bigStored, 0, nil) }},
		{"EncryptBlocks 1MiB pool", func() { _, _ = o.EncryptBlocks(cbuf[:0], big, 0, p) }},
		{"DecryptBlocks 1MiB pool", func() { _, _ = o.DecryptBlocks(pbuf[:0], bigStored, 0, p) }},
	}
	for _, tc := range tests {
		tc.f() // warm the pools
		if n := testing.AllocsPerRun(50, tc.f); n != 0 {
			t.Errorf("%s: %v allocs per call, want 0", tc.name, n)
		}
	}
}
