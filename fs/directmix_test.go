package fs

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestAsyncDirectWritesAndBufferedReads mixes asynchronous O_DIRECT writes
// (io_submit, as QEMU aio=native and fio's libaio engine issue them) with
// buffered readers of the same file, on handles opened and reopened while
// the writes run: a buffered read that starts after a direct write has
// completed must return that write's bytes or newer, never older ones
// from the page cache kept across writes and opens.
func TestAsyncDirectWritesAndBufferedReads(t *testing.T) {
	const (
		blocks = 64
		batch  = 16
	)
	tf := newVMAndPlainFS(t)
	for _, rel := range vmAndPlain {
		t.Run(rel, func(t *testing.T) {
			path := tf.m(rel)
			mustWrite(t, path, make([]byte, blocks*4096))
			w, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			ctx, err := newAIO(batch)
			if err != nil {
				t.Fatal(err)
			}
			defer ctx.destroy()
			var done [blocks]atomic.Uint64 // generation of the last completed write of each block
			stop := make(chan struct{})
			var failures atomic.Int64
			var reads atomic.Int64
			var wg sync.WaitGroup
			for r := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(r), 1))
					buf := make([]byte, 4096)
					for i := 0; ; i++ {
						f, err := os.Open(path) // a new buffered handle now and then: the cache outlives opens
						if err != nil {
							t.Error(err)
							return
						}
						for range 50 {
							select {
							case <-stop:
								f.Close()
								return
							default:
							}
							b := rng.IntN(blocks)
							want := done[b].Load()
							if _, err := f.ReadAt(buf, int64(b)*4096); err != nil {
								t.Error(err)
								f.Close()
								return
							}
							reads.Add(1)
							if got := binary.LittleEndian.Uint64(buf); got < want && failures.Add(1) <= 5 {
								t.Errorf("block %d: read generation %d after write %d had completed", b, got, want)
							}
						}
						f.Close()
					}
				}()
			}
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = alignedBuf(4096)
			}
			rng := rand.New(rand.NewPCG(9, 9))
			deadline := time.Now().Add(3 * time.Second)
			var gen uint64
			for time.Now().Before(deadline) && failures.Load() == 0 {
				gen++
				ops := make([]aioOp, batch)
				picked := rng.Perm(blocks)[:batch]
				for i, b := range picked {
					for o := 0; o < 4096; o += 8 {
						binary.LittleEndian.PutUint64(bufs[i][o:], gen)
					}
					ops[i] = aioOp{write: true, fd: int(w.Fd()), buf: bufs[i], off: int64(b) * 4096}
				}
				if err := ctx.run(ops); err != nil {
					t.Fatal(err)
				}
				for _, b := range picked {
					done[b].Store(gen)
				}
			}
			close(stop)
			wg.Wait()
			t.Logf("%d write batches, %d buffered reads, %d stale", gen, reads.Load(), failures.Load())
		})
	}
}

func TestServedChunks(t *testing.T) {
	const c = servedChunk
	var s servedChunks
	s.mark(100, 10)   // chunk 0
	s.mark(3*c-1, 2)  // chunks 2 and 3
	s.mark(64*c+5, 1) // chunk 64: the second word
	cases := []struct {
		off  int64
		n    int
		want [][2]int64
	}{
		{c, 10, nil},                   // chunk 1 was never served
		{c / 2, c, [][2]int64{{0, c}}}, // touches 0 and 1: the whole of 0
		{0, 4096, nil},                 // taken
		{2 * c, 2*c + 1, [][2]int64{{2 * c, 2 * c}}}, // 2 and 3 merge, 4 unmarked
		{64*c + c - 1, 1, [][2]int64{{64 * c, c}}},
		{0, 0, nil},
	}
	for _, tc := range cases {
		got := s.take(tc.off, tc.n)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("take(%d, %d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
	if len(s.bits) != 0 {
		t.Errorf("marks left: %v", s.bits)
	}
}
