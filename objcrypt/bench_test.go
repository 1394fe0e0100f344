package objcrypt

// Benchmarks (no timing assertions anywhere in the tests). The commands and
// the figures are in docs/BENCHMARKS.md. Quick smoke run:
//
//	go test ./objcrypt -run '^$' -bench . -benchtime=50x -benchmem

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"testing"
)

func benchObject(b *testing.B) *Object {
	b.Helper()
	o, err := NewObject(seq(0, 32), ObjectID(seq(0xa0, 16)), nil)
	if err != nil {
		b.Fatal(err)
	}
	return o
}

// BenchmarkEncryptBlock: one 4 KiB block, single core, the format's hot path
// (random nonce from crypto/rand, AAD, AES-256-GCM with a 16-byte nonce).
func BenchmarkEncryptBlock(b *testing.B) {
	o := benchObject(b)
	plain := randPlain("bench", PlainBlockSize)
	dst := make([]byte, 0, CipherBlockSize)
	b.SetBytes(PlainBlockSize)
	b.ReportAllocs()
	var blk uint64
	for b.Loop() {
		var err error
		if dst, err = o.EncryptBlock(dst[:0], plain, blk); err != nil {
			b.Fatal(err)
		}
		blk++
	}
}

// BenchmarkDecryptBlock: one 4 KiB block, single core.
func BenchmarkDecryptBlock(b *testing.B) {
	o := benchObject(b)
	stored, _ := o.EncryptBlock(nil, randPlain("bench", PlainBlockSize), 7)
	dst := make([]byte, 0, PlainBlockSize)
	b.SetBytes(PlainBlockSize)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = o.DecryptBlock(dst[:0], stored, 7); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecryptHole: reading a sparse block costs only the zero check.
func BenchmarkDecryptHole(b *testing.B) {
	o := benchObject(b)
	stored := make([]byte, CipherBlockSize)
	dst := make([]byte, 0, PlainBlockSize)
	b.SetBytes(PlainBlockSize)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = o.DecryptBlock(dst[:0], stored, 7)
	}
}

// BenchmarkRawGCM is the ceiling: crypto/cipher AES-256-GCM on 4 KiB with a
// fixed nonce and a 24-byte AAD, no nonce generation, no format around it.
// nonce=12 is the standard GCM nonce; nonce=16 is what the format uses
// (GHASH-derived counter). The format's overhead is EncryptBlock vs
// seal/nonce=16.
func BenchmarkRawGCM(b *testing.B) {
	blk, err := aes.NewCipher(seq(0, 32))
	if err != nil {
		b.Fatal(err)
	}
	plain := randPlain("bench", PlainBlockSize)
	aad := make([]byte, blockAADSize)
	for _, ns := range []int{12, 16} {
		aead, err := cipher.NewGCMWithNonceSize(blk, ns)
		if err != nil {
			b.Fatal(err)
		}
		nonce := seq(1, ns)
		sealed := aead.Seal(nil, nonce, plain, aad)
		b.Run(fmt.Sprintf("seal/nonce=%d", ns), func(b *testing.B) {
			dst := make([]byte, 0, len(sealed))
			b.SetBytes(PlainBlockSize)
			b.ReportAllocs()
			for b.Loop() {
				dst = aead.Seal(dst[:0], nonce, plain, aad)
			}
		})
		b.Run(fmt.Sprintf("open/nonce=%d", ns), func(b *testing.B) {
			dst := make([]byte, 0, PlainBlockSize)
			b.SetBytes(PlainBlockSize)
			b.ReportAllocs()
			for b.Loop() {
				if dst, err = aead.Open(dst[:0], nonce, sealed, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNonceRead: the crypto/rand cost inside every EncryptBlock (one
// 16-byte read), the part of the format overhead that is not AES-GCM.
func BenchmarkNonceRead(b *testing.B) {
	var n [NonceSize]byte
	for b.Loop() {
		if _, err := io.ReadFull(rand.Reader, n[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPool: 1 MiB requests (one FUSE max_write) at 1..GOMAXPROCS
// workers, plus inline. Allocations are per request of 256 blocks.
func BenchmarkPool(b *testing.B) {
	o := benchObject(b)
	plain := randPlain("bench", 1<<20)
	stored, _ := o.EncryptBlocks(nil, plain, 0, nil)
	cbuf := make([]byte, 0, len(stored))
	pbuf := make([]byte, 0, len(plain))
	run := func(name string, p *Pool) {
		b.Run("encrypt/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := o.EncryptBlocks(cbuf[:0], plain, 0, p); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("decrypt/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := o.DecryptBlocks(pbuf[:0], stored, 0, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("inline", nil)
	for w := 1; w <= runtime.GOMAXPROCS(0); w++ {
		p := NewPool(w, 1)
		run(fmt.Sprintf("workers=%d", w), p)
		p.Close()
	}
}

// BenchmarkThreshold chooses DefaultParallelThreshold: for requests of n
// blocks, compare inline against a GOMAXPROCS-worker pool. The threshold is
// the smallest n from which the pool is clearly faster.
func BenchmarkThreshold(b *testing.B) {
	o := benchObject(b)
	p := NewPool(0, 1)
	defer p.Close()
	for _, n := range []int{4, 8, 16, 32, 64, 128} {
		plain := randPlain("bench", n*PlainBlockSize)
		stored, _ := o.EncryptBlocks(nil, plain, 0, nil)
		cbuf := make([]byte, 0, len(stored))
		pbuf := make([]byte, 0, len(plain))
		for _, mode := range []struct {
			name string
			pool *Pool
		}{{"inline", nil}, {"pool", p}} {
			b.Run(fmt.Sprintf("encrypt/blocks=%d/%s", n, mode.name), func(b *testing.B) {
				b.SetBytes(int64(len(plain)))
				b.ReportAllocs()
				for b.Loop() {
					_, _ = o.EncryptBlocks(cbuf[:0], plain, 0, mode.pool)
				}
			})
			b.Run(fmt.Sprintf("decrypt/blocks=%d/%s", n, mode.name), func(b *testing.B) {
				b.SetBytes(int64(len(plain)))
				b.ReportAllocs()
				for b.Loop() {
					_, _ = o.DecryptBlocks(pbuf[:0], stored, 0, mode.pool)
				}
			})
		}
	}
}

// isZeroWordLoop is the previous isZero, kept as the benchmark baseline and
// as an oracle.
func isZeroWordLoop(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// BenchmarkIsZero: the hole check on a hole (worst case) and on a real
// block (first word decides).
func BenchmarkIsZero(b *testing.B) {
	hole := make([]byte, CipherBlockSize)
	data := randPlain("z", CipherBlockSize)
	for _, c := range []struct {
		name string
		f    func([]byte) bool
	}{{"memequal", isZero}, {"wordloop", isZeroWordLoop}} {
		b.Run("hole/"+c.name, func(b *testing.B) {
			b.SetBytes(CipherBlockSize)
			for b.Loop() {
				if !c.f(hole) {
					b.Fatal("hole not zero")
				}
			}
		})
		b.Run("data/"+c.name, func(b *testing.B) {
			for b.Loop() {
				if c.f(data) {
					b.Fatal("data zero")
				}
			}
		})
	}
}

// BenchmarkParseHeader: done once per open, listed for completeness.
func BenchmarkParseHeader(b *testing.B) {
	h, _ := testHeader(b).MarshalBinary()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseHeader(h); err != nil {
			b.Fatal(err)
		}
	}
}
