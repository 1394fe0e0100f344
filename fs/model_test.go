package fs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// TestRandomOpsModel runs goroutines doing random writes, truncates,
// punches, zeroed ranges, stores through shared mappings, copy_file_range
// and reads through the mount (buffered and O_DIRECT handles) on their own
// file, and compares with an in-memory model after every step.
func TestRandomOpsModel(t *testing.T) {
	tf := newTestFS(t, testOpts{pool: objcrypt.NewPool(2, 8*4096)})
	tf.encDir("vm")
	const workers, steps, maxSize = 4, 120, 160 * 1024
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			path := tf.m(fmt.Sprintf("vm/f%d", w))
			if w == 0 {
				path = tf.m(fmt.Sprintf("plain%d", w)) // one plain file as a control
			}
			bf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			defer bf.Close()
			df, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer df.Close()
			var model []byte
			grow := func(n int) {
				if n > len(model) {
					model = append(model, make([]byte, n-len(model))...)
				}
			}
			for step := range steps {
				f := bf
				if rng.IntN(2) == 0 {
					f = df
				}
				off := rng.IntN(maxSize)
				n := rng.IntN(3*4096) + 1
				if rng.IntN(8) == 0 {
					n = rng.IntN(64*1024) + 1
				}
				var op string
				switch k := rng.IntN(12); {
				case k < 5:
					op = fmt.Sprintf("write %d+%d", off, n)
					data := make([]byte, n)
					for i := range data {
						data[i] = byte(rng.IntN(255) + 1)
					}
					if _, err := f.WriteAt(data, int64(off)); err != nil {
						t.Errorf("worker %d step %d %s: %v", w, step, op, err)
						return
					}
					grow(off + n)
					copy(model[off:], data)
				case k < 7:
					sz := rng.IntN(maxSize)
					op = fmt.Sprintf("truncate %d", sz)
					if err := f.Truncate(int64(sz)); err != nil {
						t.Errorf("worker %d step %d %s: %v", w, step, op, err)
						return
					}
					if sz < len(model) {
						model = model[:sz]
					} else {
						grow(sz)
					}
				case k < 8:
					mode, keep := uint32(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE), true
					op = fmt.Sprintf("punch %d+%d", off, n)
					if rng.IntN(2) == 0 {
						mode, keep = unix.FALLOC_FL_ZERO_RANGE, rng.IntN(2) == 0
						if keep {
							mode |= unix.FALLOC_FL_KEEP_SIZE
						}
						op = fmt.Sprintf("zero range %d+%d keep size %v", off, n, keep)
					}
					if err := unix.Fallocate(int(f.Fd()), mode, int64(off), int64(n)); err != nil {
						t.Errorf("worker %d step %d %s: %v", w, step, op, err)
						return
					}
					if !keep {
						grow(off + n)
					}
					if off < len(model) {
						clear(model[off:min(off+n, len(model))])
					}
				case k < 9 && off+n <= len(model):
					// A store through a shared mapping, written back by msync.
					op = fmt.Sprintf("mmap write %d+%d", off, n)
					data := randBytes(n)
					if err := mmapWrite(bf, off, data); err != nil {
						t.Errorf("worker %d step %d %s: %v", w, step, op, err)
						return
					}
					copy(model[off:], data)
				case k < 10 && len(model) > 0:
					// copy_file_range from another part of the same file
					// (ranges may not overlap) or, when they would, from
					// the start of the file to past its end.
					src := rng.IntN(len(model))
					n = min(n, len(model)-src)
					if src < off+n && off < src+n {
						off = len(model) + rng.IntN(4096)
					}
					op = fmt.Sprintf("copy_file_range %d+%d to %d", src, n, off)
					if err := copyRange(f, src, off, n); err != nil {
						t.Errorf("worker %d step %d %s: %v", w, step, op, err)
						return
					}
					chunk := append([]byte(nil), model[src:src+n]...)
					grow(off + n)
					copy(model[off:], chunk)
				default:
					op = fmt.Sprintf("read %d+%d", off, n)
					buf := make([]byte, n)
					got, err := f.ReadAt(buf, int64(off))
					var exp []byte
					if off < len(model) {
						exp = model[off:min(off+n, len(model))]
					}
					want := len(exp)
					if got != want || (err != nil && got == n) || !bytes.Equal(buf[:got], exp) {
						t.Errorf("worker %d step %d %s: got %d bytes (%v), want %d", w, step, op, got, err, want)
						return
					}
				}
				full, err := os.ReadFile(path)
				if err != nil || !bytes.Equal(full, model) {
					t.Errorf("worker %d after step %d (%s): file (%d bytes, %v) differs from model (%d bytes)", w, step, op, len(full), err, len(model))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// mmapWrite stores data at off through a shared writable mapping of f
// and writes it back with msync.
func mmapWrite(f *os.File, off int, data []byte) error {
	start := off &^ (os.Getpagesize() - 1)
	m, err := unix.Mmap(int(f.Fd()), int64(start), off-start+len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	copy(m[off-start:], data)
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		unix.Munmap(m)
		return fmt.Errorf("msync: %w", err)
	}
	return unix.Munmap(m)
}

// copyRange copies n bytes of f from src to dst with copy_file_range,
// looping over short copies.
func copyRange(f *os.File, src, dst, n int) error {
	so, do := int64(src), int64(dst)
	for n > 0 {
		c, err := unix.CopyFileRange(int(f.Fd()), &so, int(f.Fd()), &do, n, 0)
		if err != nil {
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if c == 0 {
			return fmt.Errorf("copy_file_range: no progress with %d bytes left", n)
		}
		n -= c
	}
	return nil
}

// TestConcurrentNoTornBlocks has writers storing whole blocks of one byte
// value and readers checking that every block they see is uniform.
func TestConcurrentNoTornBlocks(t *testing.T) {
	tf := newTestFS(t, testOpts{pool: objcrypt.NewPool(2, 8*4096)})
	tf.encDir("vm")
	path := tf.m("vm/shared")
	mustWrite(t, path, make([]byte, 64*4096))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < 300; i++ {
				blk, cnt := rng.IntN(60), rng.IntN(4)+1
				v := byte(rng.IntN(255) + 1)
				if _, err := f.WriteAt(bytes.Repeat([]byte{v}, cnt*4096), int64(blk*4096)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var rwg sync.WaitGroup
	for r := range 2 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			buf := make([]byte, 16*4096)
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				off := rng.IntN(48) * 4096
				if _, err := f.ReadAt(buf, int64(off)); err != nil {
					t.Error(err)
					return
				}
				for b := 0; b < 16; b++ {
					blk := buf[b*4096 : (b+1)*4096]
					if !bytes.Equal(blk, bytes.Repeat(blk[:1], 4096)) {
						t.Errorf("torn block %d", off/4096+b)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
}
