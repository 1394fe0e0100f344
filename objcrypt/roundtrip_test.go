package objcrypt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// roundTripSizes are the plaintext sizes of issue 2, Part 3.
var roundTripSizes = []int{
	0, 1, 31, 32, 33, 4095, 4096, 4097,
	3*PlainBlockSize - 1, 3 * PlainBlockSize, 3*PlainBlockSize + 1,
	1<<20 + 7,
}

// testPools returns the ways bulk crypto can run: inline, a pool forced on
// for every multi-block request, and a default pool.
func testPools(t *testing.T) []struct {
	name string
	pool *Pool
} {
	forced := NewPool(3, 1)
	def := NewPool(0, 0)
	t.Cleanup(forced.Close)
	t.Cleanup(def.Close)
	return []struct {
		name string
		pool *Pool
	}{{"inline", nil}, {"pool3-threshold1", forced}, {"pool-default", def}}
}

func TestRoundTripSizes(t *testing.T) {
	v := newTestVM(t, "rt")
	o, _ := v.newObject(t, "rt-obj")
	pools := testPools(t)
	for _, size := range roundTripSizes {
		plain := randPlain(fmt.Sprint(size), size)
		wantCipher := int(CipherSizeFromPlain(uint64(size)) - HeaderRegionSize)
		for _, encP := range pools {
			for _, decP := range pools {
				for _, first := range []uint64{0, 7} {
					name := fmt.Sprintf("size=%d/enc=%s/dec=%s/first=%d", size, encP.name, decP.name, first)
					t.Run(name, func(t *testing.T) {
						prefix := []byte("prefix")
						stored, err := o.EncryptBlocks(bytes.Clone(prefix), plain, first, encP.pool)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.HasPrefix(stored, prefix) {
							t.Fatal("EncryptBlocks did not keep dst")
						}
						stored = stored[len(prefix):]
						if len(stored) != wantCipher {
							t.Fatalf("stored %d bytes, want %d", len(stored), wantCipher)
						}
						got, err := o.DecryptBlocks(bytes.Clone(prefix), stored, first, decP.pool)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], plain) {
							t.Fatal("round trip changed the plaintext")
						}
						ps, err := PlainSizeFromCipher(uint64(HeaderRegionSize + len(stored)))
						if err != nil || ps != uint64(size) {
							t.Fatalf("PlainSizeFromCipher = %d, %v; want %d", ps, err, size)
						}
					})
				}
			}
		}
	}
}

// TestEncryptFreshNonces checks that encrypting the same block twice never
// gives the same stored bytes (each write draws a new random nonce).
func TestEncryptFreshNonces(t *testing.T) {
	v := newTestVM(t, "nonce")
	o, _ := v.newObject(t, "nonce-obj")
	plain := randPlain("n", PlainBlockSize)
	seen := map[string]bool{}
	for range 64 {
		s, err := o.EncryptBlock(nil, plain, 3)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(s[:NonceSize])] {
			t.Fatal("nonce repeated")
		}
		seen[string(s[:NonceSize])] = true
	}
}

// TestEncryptBlockInputUnchanged: the AEAD contract that the input is not
// modified and dst is appended to, not overwritten.
func TestEncryptBlockInputUnchanged(t *testing.T) {
	v := newTestVM(t, "contract")
	o, _ := v.newObject(t, "contract-obj")
	plain := randPlain("c", 100)
	keep := bytes.Clone(plain)
	dst := make([]byte, 3, 3+100+BlockOverhead)
	copy(dst, "abc")
	s, err := o.EncryptBlock(dst, plain, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain, keep) || string(s[:3]) != "abc" || len(s) != 3+100+BlockOverhead {
		t.Fatal("EncryptBlock modified its input or lost dst")
	}
	if &s[0] != &dst[0] {
		t.Fatal("EncryptBlock reallocated although dst had capacity")
	}
	sk := bytes.Clone(s)
	out, err := o.DecryptBlock(nil, s[3:], 0)
	if err != nil || !bytes.Equal(out, plain) || !bytes.Equal(s, sk) {
		t.Fatalf("DecryptBlock: %v, or it modified its input", err)
	}
}

func TestEncryptBlockMisusePanics(t *testing.T) {
	v := newTestVM(t, "panic")
	o, _ := v.newObject(t, "panic-obj")
	for _, n := range []int{0, PlainBlockSize + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			defer func() {
				r := recover()
				if msg, _ := r.(string); len(msg) < 30 || msg[:30] != "objcrypt: internal error: Encr" {
					t.Fatalf("panic %v, want an objcrypt internal error", r)
				}
			}()
			_, _ = o.EncryptBlock(nil, make([]byte, n), 0)
		})
	}
}

func TestEncryptNonceError(t *testing.T) {
	v := newTestVM(t, "nonce-err")
	id, _ := NewObjectID(newDetReader("x"))
	o, err := NewObject(v.dek, id, errReader{})
	if err != nil {
		t.Fatal(err)
	}
	dst := []byte("keep")
	got, err := o.EncryptBlock(dst, []byte("x"), 0)
	if !errors.Is(err, errNoEntropy) || string(got) != "keep" {
		t.Fatalf("EncryptBlock with failing rand = %q, %v", got, err)
	}
	got, err = o.EncryptBlocks(dst, make([]byte, 3*PlainBlockSize), 0, nil)
	if !errors.Is(err, errNoEntropy) || string(got) != "keep" {
		t.Fatalf("EncryptBlocks with failing rand = %q, %v", got, err)
	}
}

func TestNewObjectBadDEK(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewObject(make([]byte, n), ObjectID{}, nil); !errors.Is(err, ErrHeader) {
			t.Errorf("NewObject with %d-byte DEK: %v, want ErrHeader", n, err)
		}
	}
}

// memFile is a minimal encrypted file over a []byte backing store, written
// only with the exported offset helpers. It does what fs/ must do:
// read-modify-write of the edge blocks of an unaligned write, extension
// with holes (rewriting the old partial last block as a full one), and
// truncation (re-encrypting a new partial last block). That the random
// operations below agree with a plain []byte proves the helpers suffice.
type memFile struct {
	o       *Object
	pool    *Pool
	backing []byte // header region ‖ blocks
}

func newMemFile(t *testing.T, o *Object, h *Header, pool *Pool) *memFile {
	region, err := h.MarshalRegion()
	if err != nil {
		t.Fatal(err)
	}
	return &memFile{o: o, pool: pool, backing: region}
}

func (f *memFile) size() (uint64, error) { return PlainSizeFromCipher(uint64(len(f.backing))) }

// storedBlock returns the stored bytes of block b of a file of plainSize.
func (f *memFile) storedBlock(b, plainSize uint64) []byte {
	at := CipherOffsetOfBlock(b)
	end := min(at+CipherBlockSize, CipherSizeFromPlain(plainSize))
	return f.backing[at:end]
}

// readBlock returns the plaintext of block b of a file of plainSize.
func (f *memFile) readBlock(b, plainSize uint64) ([]byte, error) {
	return f.o.DecryptBlock(nil, f.storedBlock(b, plainSize), b)
}

// isHole reports whether stored bytes are all zero (sparse).
func isHoleBytes(s []byte) bool { return bytes.Count(s, []byte{0}) == len(s) }

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	size, err := f.size()
	if err != nil {
		return 0, err
	}
	if uint64(off) >= size {
		return 0, io.EOF
	}
	n := min(uint64(len(p)), size-uint64(off))
	first, count := BlockRange(uint64(off), n)
	cStart := CipherOffsetOfBlock(first)
	cEnd := min(CipherOffsetOfBlock(first+count), uint64(len(f.backing)))
	plain, err := f.o.DecryptBlocks(nil, f.backing[cStart:cEnd], first, f.pool)
	if err != nil {
		return 0, err
	}
	copy(p[:n], plain[uint64(off)-PlainOffsetOfBlock(first):])
	if n < uint64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// resize changes the plaintext size, keeping the content of the common
// prefix and reading zeros beyond the old end.
func (f *memFile) resize(newSize uint64) error {
	old, err := f.size()
	if err != nil {
		return err
	}
	switch {
	case newSize > old:
		// The old last block, if partial, becomes (more) full: re-encrypt it
		// at its new length unless it is a hole, which stays one.
		if old%PlainBlockSize != 0 {
			b := BlockOfPlainOffset(old)
			stored := f.storedBlock(b, old)
			newLen := min(PlainOffsetOfBlock(b+1), newSize) - PlainOffsetOfBlock(b)
			var enc []byte
			if isHoleBytes(stored) {
				enc = make([]byte, newLen+BlockOverhead)
			} else {
				plain, err := f.readBlock(b, old)
				if err != nil {
					return err
				}
				plain = append(plain, make([]byte, newLen-uint64(len(plain)))...)
				if enc, err = f.o.EncryptBlock(nil, plain, b); err != nil {
					return err
				}
			}
			f.backing = append(f.backing[:CipherOffsetOfBlock(b)], enc...)
		}
		// Everything after is a hole: zero bytes (sparse on a real disk).
		f.backing = append(f.backing, make([]byte, CipherSizeFromPlain(newSize)-uint64(len(f.backing)))...)
	case newSize < old:
		if newSize%PlainBlockSize != 0 {
			b := BlockOfPlainOffset(newSize)
			stored := f.storedBlock(b, old)
			keep := newSize - PlainOffsetOfBlock(b)
			var enc []byte
			if isHoleBytes(stored) {
				enc = make([]byte, keep+BlockOverhead)
			} else {
				plain, err := f.readBlock(b, old)
				if err != nil {
					return err
				}
				if enc, err = f.o.EncryptBlock(nil, plain[:keep], b); err != nil {
					return err
				}
			}
			f.backing = append(f.backing[:CipherOffsetOfBlock(b)], enc...)
		}
		f.backing = f.backing[:CipherSizeFromPlain(newSize)]
	}
	return nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	old, err := f.size()
	if err != nil {
		return 0, err
	}
	end := uint64(off) + uint64(len(p))
	if end > old {
		if err := f.resize(end); err != nil {
			return 0, err
		}
	}
	size := max(old, end)
	first, count := BlockRange(uint64(off), uint64(len(p)))
	pStart := PlainOffsetOfBlock(first)
	pEnd := min(PlainOffsetOfBlock(first+count), size)
	buf := make([]byte, pEnd-pStart)
	// read-modify-write only the edge blocks the write covers partly
	if uint64(off) != pStart {
		blk, err := f.readBlock(first, size)
		if err != nil {
			return 0, err
		}
		copy(buf, blk)
	}
	if last := first + count - 1; end != pEnd && (last != first || uint64(off) == pStart) {
		blk, err := f.readBlock(last, size)
		if err != nil {
			return 0, err
		}
		copy(buf[PlainOffsetOfBlock(last)-pStart:], blk)
	}
	copy(buf[uint64(off)-pStart:], p)
	enc, err := f.o.EncryptBlocks(nil, buf, first, f.pool)
	if err != nil {
		return 0, err
	}
	at := CipherOffsetOfBlock(first)
	if want := min(CipherOffsetOfBlock(first+count), CipherSizeFromPlain(size)) - at; uint64(len(enc)) != want || at+want > uint64(len(f.backing)) {
		return 0, fmt.Errorf("test: write of %d stored bytes at %d overruns backing of %d", len(enc), at, len(f.backing))
	}
	copy(f.backing[at:], enc)
	return len(p), nil
}

func TestMemFileAgainstModel(t *testing.T) {
	v := newTestVM(t, "model")
	for _, pc := range testPools(t) {
		t.Run(pc.name, func(t *testing.T) {
			o, h := v.newObject(t, "model-obj-"+pc.name)
			f := newMemFile(t, o, h, pc.pool)
			var model []byte
			rng := rand.New(rand.NewPCG(1, uint64(len(pc.name))))
			// offsets and lengths cluster around block edges
			pick := func(limit int) int {
				switch rng.IntN(3) {
				case 0:
					return rng.IntN(limit + 1)
				default:
					b := rng.IntN(limit/PlainBlockSize + 2)
					return max(0, min(limit, b*PlainBlockSize+rng.IntN(65)-32))
				}
			}
			const maxSize = 9*PlainBlockSize + 123
			sawHole := false
			for i := range 600 {
				switch op := rng.IntN(10); {
				case op < 6: // write
					off := pick(maxSize)
					n := pick(maxSize - off)
					if rng.IntN(4) == 0 {
						n = min(n, 40)
					}
					data := randPlain(fmt.Sprint(i), n)
					if _, err := f.WriteAt(data, int64(off)); err != nil {
						t.Fatalf("op %d: WriteAt(%d, %d): %v", i, off, n, err)
					}
					if n > 0 { // pwrite of 0 bytes does not extend
						if off+n > len(model) {
							model = append(model, make([]byte, off+n-len(model))...)
						}
						copy(model[off:], data)
					}
				case op < 8: // truncate (both ways)
					n := pick(maxSize)
					if err := f.resize(uint64(n)); err != nil {
						t.Fatalf("op %d: resize(%d): %v", i, n, err)
					}
					if n > len(model) {
						model = append(model, make([]byte, n-len(model))...)
					} else {
						model = model[:n]
					}
				default: // read a random range
					off := pick(maxSize)
					n := pick(maxSize)
					got := make([]byte, n)
					k, err := f.ReadAt(got, int64(off))
					var want []byte
					if off < len(model) {
						want = model[off:min(len(model), off+n)]
					}
					if k != len(want) || !bytes.Equal(got[:k], want) {
						t.Fatalf("op %d: ReadAt(%d, %d) = %d bytes, %v; differs from model (%d bytes)", i, off, n, k, err, len(want))
					}
					if (k < n) != (err == io.EOF) {
						t.Fatalf("op %d: ReadAt(%d, %d) = %d, %v: wrong EOF", i, off, n, k, err)
					}
				}
				if want := CipherSizeFromPlain(uint64(len(model))); uint64(len(f.backing)) != want {
					t.Fatalf("op %d: backing is %d bytes, want %d for plain %d", i, len(f.backing), want, len(model))
				}
				for b := range PlainBlocks(uint64(len(model))) {
					if isHoleBytes(f.storedBlock(b, uint64(len(model)))) {
						sawHole = true
					}
				}
			}
			// full comparison at the end
			got := make([]byte, len(model))
			if n, err := f.ReadAt(got, 0); len(model) > 0 && (n != len(model) || err != nil) || !bytes.Equal(got, model) {
				t.Fatalf("final content differs from model (%v)", err)
			}
			if !sawHole {
				t.Fatal("the random walk never produced a sparse block; widen it")
			}
		})
	}
}
