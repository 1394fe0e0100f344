package objcrypt

import (
	"sync"
	"testing"
)

// TestIsZero checks the fast hole test against the plain word loop at every
// length around the word, block and stored-block sizes, with a single
// non-zero byte near each end and at a stride in between.
func TestIsZero(t *testing.T) {
	var lengths []int
	for n := 0; n <= 40; n++ {
		lengths = append(lengths, n)
	}
	for _, edge := range []int{PlainBlockSize, CipherBlockSize, 2 * CipherBlockSize} {
		for d := -9; d <= 9; d++ {
			lengths = append(lengths, edge+d)
		}
	}
	for _, n := range lengths {
		b := make([]byte, n)
		if !isZero(b) {
			t.Fatalf("isZero(%d zero bytes) = false", n)
		}
		for i := range n {
			if i > 40 && i < n-40 && i%61 != 0 { // every edge byte, a stride inside
				continue
			}
			b[i] = 0x10
			if isZero(b) || isZero(b) != isZeroWordLoop(b) {
				t.Fatalf("isZero with byte %d of %d set = true", i, n)
			}
			b[i] = 0
		}
	}
}

// TestNonceReadAheadUnique: nonces handed out from the pooled read-ahead
// are never repeated, whether blocks are encrypted one at a time, in runs,
// from several goroutines, or interleaved with objects that use an
// injected random source (which overwrites the shared scratch).
func TestNonceReadAheadUnique(t *testing.T) {
	sys, err := NewObject(seq(0, KeySize), ObjectID(seq(0x10, ObjectIDSize)), nil)
	if err != nil {
		t.Fatal(err)
	}
	det, err := NewObject(seq(0, KeySize), ObjectID(seq(0x20, ObjectIDSize)), zeroReader{})
	if err != nil {
		t.Fatal(err)
	}
	plain := randPlain("nonce", 3*PlainBlockSize)
	const goroutines, rounds = 4, 300
	got := make(chan [NonceSize]byte, goroutines*rounds*4)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				one, err := sys.EncryptBlock(nil, plain[:PlainBlockSize], uint64(i))
				if err != nil {
					t.Error(err)
					return
				}
				run, err := sys.EncryptBlocks(nil, plain, uint64(i), nil)
				if err != nil {
					t.Error(err)
					return
				}
				if g%2 == 0 { // reuse the scratch with an injected source
					if _, err := det.EncryptBlock(nil, plain[:PlainBlockSize], 0); err != nil {
						t.Error(err)
						return
					}
				}
				got <- [NonceSize]byte(one[:NonceSize])
				for b := range 3 {
					got <- [NonceSize]byte(run[b*CipherBlockSize:][:NonceSize])
				}
			}
		}()
	}
	wg.Wait()
	close(got)
	seen := make(map[[NonceSize]byte]bool)
	for n := range got {
		if seen[n] {
			t.Fatalf("nonce %x handed out twice", n)
		}
		seen[n] = true
	}
	if len(seen) != goroutines*rounds*4 {
		t.Fatalf("%d nonces, want %d", len(seen), goroutines*rounds*4)
	}
}

// zeroReader is a deterministic random source: all-zero nonces, which a
// leaked read-ahead would collide with.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }
