package objcrypt

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// Sizes at every boundary. cipher = 4096 (header region)
// + 4128 per full block + (rest + 32) for a partial last block.
var sizeTable = []struct {
	plain, cipher uint64
}{
	{0, 4096},
	{1, 4096 + 1 + 32},
	{31, 4096 + 31 + 32},
	{32, 4096 + 32 + 32},
	{33, 4096 + 33 + 32},
	{4095, 4096 + 4095 + 32},
	{4096, 4096 + 4128},
	{4097, 4096 + 4128 + 1 + 32},
	{2*4096 - 1, 4096 + 4128 + 4095 + 32},
	{2 * 4096, 4096 + 2*4128},
	{3*4096 - 1, 4096 + 2*4128 + 4095 + 32},
	{3 * 4096, 4096 + 3*4128},
	{3*4096 + 1, 4096 + 3*4128 + 1 + 32},
	{1<<20 + 7, 4096 + 256*4128 + 7 + 32},
	{1 << 30, 4096 + (1<<30)/4096*4128},
	{MaxPlainSize, math.MaxInt64},
}

func TestCipherSizeFromPlainTable(t *testing.T) {
	for _, tc := range sizeTable {
		if got := CipherSizeFromPlain(tc.plain); got != tc.cipher {
			t.Errorf("CipherSizeFromPlain(%d) = %d, want %d", tc.plain, got, tc.cipher)
		}
		got, err := PlainSizeFromCipher(tc.cipher)
		if err != nil || got != tc.plain {
			t.Errorf("PlainSizeFromCipher(%d) = %d, %v; want %d", tc.cipher, got, err, tc.plain)
		}
	}
}

func TestMaxPlainSize(t *testing.T) {
	// MaxPlainSize is the largest size whose backing size fits an off_t.
	if c := CipherSizeFromPlain(MaxPlainSize); c > math.MaxInt64 {
		t.Fatalf("CipherSizeFromPlain(MaxPlainSize) = %d > MaxInt64", c)
	}
	// one more byte needs a bigger backing file than an off_t can describe
	full, rest := (MaxPlainSize+1)/PlainBlockSize, (MaxPlainSize+1)%PlainBlockSize
	if rest == 0 || full*CipherBlockSize+rest+BlockOverhead <= math.MaxInt64-HeaderRegionSize {
		t.Fatalf("MaxPlainSize+1 would still fit: full=%d rest=%d", full, rest)
	}
	for _, p := range []uint64{MaxPlainSize + 1, math.MaxUint64 - 1, math.MaxUint64} {
		if c := CipherSizeFromPlain(p); c != math.MaxUint64 {
			t.Errorf("CipherSizeFromPlain(%d) = %d, want saturation at MaxUint64", p, c)
		}
	}
}

func TestPlainSizeFromCipherErrors(t *testing.T) {
	// shorter than the header region
	for _, c := range []uint64{0, 1, 100, HeaderRegionSize - 1} {
		if _, err := PlainSizeFromCipher(c); !errors.Is(err, ErrHeader) {
			t.Errorf("PlainSizeFromCipher(%d): %v, want ErrHeader", c, err)
		}
	}
	// a trailing fragment of 1..32 bytes after 0, 1, 2 and 1000 full blocks
	for _, full := range []uint64{0, 1, 2, 1000} {
		for frag := uint64(1); frag <= BlockOverhead; frag++ {
			c := HeaderRegionSize + full*CipherBlockSize + frag
			if _, err := PlainSizeFromCipher(c); !errors.Is(err, ErrHeader) {
				t.Errorf("PlainSizeFromCipher(%d) (fragment %d): %v, want ErrHeader", c, frag, err)
			}
		}
		// 33 bytes is the smallest valid partial block
		c := HeaderRegionSize + full*CipherBlockSize + BlockOverhead + 1
		if p, err := PlainSizeFromCipher(c); err != nil || p != full*PlainBlockSize+1 {
			t.Errorf("PlainSizeFromCipher(%d) = %d, %v", c, p, err)
		}
	}
	// the largest possible backing size still has an answer
	if _, err := PlainSizeFromCipher(math.MaxUint64); err != nil {
		body := uint64(math.MaxUint64 - HeaderRegionSize)
		if r := body % CipherBlockSize; r == 0 || r > BlockOverhead {
			t.Errorf("PlainSizeFromCipher(MaxUint64): %v", err)
		}
	}
}

// sampleSizes returns boundary sizes around many block edges plus random
// sizes across the whole valid range.
func sampleSizes() []uint64 {
	var s []uint64
	for b := uint64(0); b < 70; b++ {
		for d := range uint64(70) {
			s = append(s, b*PlainBlockSize+d, b*PlainBlockSize+PlainBlockSize-1-min(d, PlainBlockSize-1))
		}
	}
	rng := rand.New(rand.NewPCG(2, 3))
	for range 20000 {
		s = append(s, rng.Uint64N(MaxPlainSize+1), rng.Uint64N(1<<40))
	}
	return append(s, MaxPlainSize, MaxPlainSize-1, MaxPlainSize-PlainBlockSize)
}

func TestSizeRoundTripProperty(t *testing.T) {
	for _, p := range sampleSizes() {
		c := CipherSizeFromPlain(p)
		got, err := PlainSizeFromCipher(c)
		if err != nil || got != p {
			t.Fatalf("PlainSizeFromCipher(CipherSizeFromPlain(%d)=%d) = %d, %v", p, c, got, err)
		}
		// strictly monotonic and the overhead is exactly what the format says
		if p > 0 {
			if cp := CipherSizeFromPlain(p - 1); cp >= c {
				t.Fatalf("CipherSizeFromPlain not increasing at %d: %d >= %d", p, cp, c)
			}
		}
		if want := HeaderRegionSize + p + PlainBlocks(p)*BlockOverhead; c != want {
			t.Fatalf("CipherSizeFromPlain(%d) = %d, want header + plain + 32/block = %d", p, c, want)
		}
	}
	// and the other way: every valid backing size comes from exactly one plain size
	rng := rand.New(rand.NewPCG(4, 5))
	for range 50000 {
		c := rng.Uint64N(math.MaxInt64)
		if rng.IntN(2) == 0 {
			c = rng.Uint64N(100 * CipherBlockSize)
		}
		p, err := PlainSizeFromCipher(c)
		if err != nil {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("PlainSizeFromCipher(%d): %v, not ErrHeader", c, err)
			}
			body := c - HeaderRegionSize
			if c >= HeaderRegionSize && (body%CipherBlockSize == 0 || body%CipherBlockSize > BlockOverhead) {
				t.Fatalf("PlainSizeFromCipher(%d) rejected a valid size: %v", c, err)
			}
			continue
		}
		if back := CipherSizeFromPlain(p); back != c {
			t.Fatalf("CipherSizeFromPlain(PlainSizeFromCipher(%d)=%d) = %d", c, p, back)
		}
	}
}

func TestBlockHelpers(t *testing.T) {
	tests := []struct {
		plainOff                 uint64
		block, blockPlain, cBlkO uint64
	}{
		{0, 0, 0, 4096},
		{1, 0, 0, 4096},
		{4095, 0, 0, 4096},
		{4096, 1, 4096, 4096 + 4128},
		{4097, 1, 4096, 4096 + 4128},
		{3*4096 - 1, 2, 2 * 4096, 4096 + 2*4128},
		{3 * 4096, 3, 3 * 4096, 4096 + 3*4128},
		{1 << 20, 256, 1 << 20, 4096 + 256*4128},
	}
	for _, tc := range tests {
		if b := BlockOfPlainOffset(tc.plainOff); b != tc.block {
			t.Errorf("BlockOfPlainOffset(%d) = %d, want %d", tc.plainOff, b, tc.block)
		}
		if o := PlainOffsetOfBlock(tc.block); o != tc.blockPlain {
			t.Errorf("PlainOffsetOfBlock(%d) = %d, want %d", tc.block, o, tc.blockPlain)
		}
		if o := CipherOffsetOfBlock(tc.block); o != tc.cBlkO {
			t.Errorf("CipherOffsetOfBlock(%d) = %d, want %d", tc.block, o, tc.cBlkO)
		}
	}
	for _, tc := range []struct{ size, blocks uint64 }{
		{0, 0}, {1, 1}, {4095, 1}, {4096, 1}, {4097, 2}, {3*4096 - 1, 3}, {3 * 4096, 3}, {3*4096 + 1, 4},
		{MaxPlainSize, MaxPlainSize/4096 + 1},
	} {
		if got := PlainBlocks(tc.size); got != tc.blocks {
			t.Errorf("PlainBlocks(%d) = %d, want %d", tc.size, got, tc.blocks)
		}
	}
	// the last block of any valid object starts inside an off_t
	if c := CipherOffsetOfBlock(PlainBlocks(MaxPlainSize) - 1); c > math.MaxInt64 {
		t.Errorf("CipherOffsetOfBlock(last block of MaxPlainSize) = %d overflows off_t", c)
	}
}

func TestBlockRange(t *testing.T) {
	tests := []struct {
		off, n, first, count uint64
	}{
		{0, 0, 0, 0},
		{5000, 0, 1, 0},
		{0, 1, 0, 1},
		{0, 4096, 0, 1},
		{0, 4097, 0, 2},
		{1, 4095, 0, 1},
		{1, 4096, 0, 2},
		{4095, 1, 0, 1},
		{4095, 2, 0, 2},
		{4096, 4096, 1, 1},
		{4096, 4097, 1, 2},
		{100, 3 * 4096, 0, 4},
		{8191, 8194, 1, 4},
		{1 << 20, 1 << 20, 256, 256},
		{1<<20 + 1, 1 << 20, 256, 257},
		// ranges running off the end of uint64 are cut, not wrapped
		{math.MaxUint64, 1, math.MaxUint64 / 4096, 1},
		{math.MaxUint64, 2, math.MaxUint64 / 4096, 1},
		{math.MaxUint64 - 4096, math.MaxUint64, math.MaxUint64/4096 - 1, 2},
		{0, math.MaxUint64, 0, math.MaxUint64/4096 + 1},
	}
	for _, tc := range tests {
		first, count := BlockRange(tc.off, tc.n)
		if first != tc.first || count != tc.count {
			t.Errorf("BlockRange(%d, %d) = %d, %d; want %d, %d", tc.off, tc.n, first, count, tc.first, tc.count)
		}
	}
}

// TestBlockRangeCovers: the blocks returned cover the range exactly — the
// first starts at or before off, the last ends at or after off+n, and no
// block is superfluous.
func TestBlockRangeCovers(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 7))
	for i := range 100000 {
		off := rng.Uint64N(1 << 24)
		n := rng.Uint64N(1 << 21)
		if i%3 == 0 {
			off = uint64(rng.IntN(50))*PlainBlockSize + uint64(rng.IntN(3)) - 1
			off = min(off, 1<<24)
			n = uint64(rng.IntN(5))*PlainBlockSize + uint64(rng.IntN(3))
		}
		first, count := BlockRange(off, n)
		if n == 0 {
			if count != 0 {
				t.Fatalf("BlockRange(%d, 0) count %d", off, count)
			}
			continue
		}
		start, end := PlainOffsetOfBlock(first), PlainOffsetOfBlock(first+count)
		if start > off || end < off+n || off-start >= PlainBlockSize || end-(off+n) >= PlainBlockSize {
			t.Fatalf("BlockRange(%d, %d) = [%d, %d) does not cover tightly", off, n, start, end)
		}
	}
}
