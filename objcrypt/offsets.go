package objcrypt

import (
	"fmt"
	"math"
)

// All plaintext<->ciphertext arithmetic lives in this file. Names say which
// side a quantity is on: plain* is what users see through the mount, cipher*
// is the backing file.

const (
	// PlainBlockSize is the plaintext carried by one full block.
	PlainBlockSize = 4096
	// NonceSize is the random per-block-write GCM nonce.
	NonceSize = 16
	// TagSize is the GCM authentication tag.
	TagSize = 16
	// BlockOverhead is what every stored block adds to its plaintext.
	BlockOverhead = NonceSize + TagSize
	// CipherBlockSize is a full stored block: nonce ‖ ciphertext ‖ tag.
	CipherBlockSize = PlainBlockSize + BlockOverhead
	// HeaderRegionSize is the fixed region at the start of every backing file
	// holding a copy of the header, zero padded, so a shallow rekey can rewrite
	// it in place without moving data.
	HeaderRegionSize = 4096
)

// maxCipherBody is the most block bytes a backing file can hold when its size
// must fit an off_t (int64).
const maxCipherBody = math.MaxInt64 - HeaderRegionSize

// MaxPlainSize is the largest plaintext size whose backing file size fits in
// an int64 (off_t). File systems must refuse larger sizes (EFBIG); below it
// every function in this file is exact and overflow-free.
const MaxPlainSize = maxCipherBody/CipherBlockSize*PlainBlockSize +
	max(0, maxCipherBody%CipherBlockSize-BlockOverhead)

// CipherSizeFromPlain returns the backing file size of an object holding
// plainSize bytes. For plainSize > MaxPlainSize it returns math.MaxUint64, a
// size no file can have, so a caller that forgot the limit gets an error from
// the OS instead of a silently wrapped (smaller) size.
func CipherSizeFromPlain(plainSize uint64) uint64 {
	if plainSize > MaxPlainSize {
		return math.MaxUint64
	}
	full := plainSize / PlainBlockSize
	rest := plainSize % PlainBlockSize
	size := HeaderRegionSize + full*CipherBlockSize
	if rest > 0 {
		size += rest + BlockOverhead
	}
	return size
}

// PlainSizeFromCipher returns the plaintext size of a backing file of
// cipherSize bytes. A file shorter than the header region, or ending in a
// fragment too short to hold a nonce, a tag and one byte, is corrupt.
func PlainSizeFromCipher(cipherSize uint64) (uint64, error) {
	if cipherSize < HeaderRegionSize {
		return 0, fmt.Errorf("backing size %d is shorter than the %d-byte header region: %w",
			cipherSize, HeaderRegionSize, ErrHeader)
	}
	body := cipherSize - HeaderRegionSize
	full := body / CipherBlockSize
	rest := body % CipherBlockSize
	if rest > 0 && rest <= BlockOverhead {
		return 0, fmt.Errorf("backing size %d ends in a %d-byte fragment (at most %d is corrupt): %w",
			cipherSize, rest, BlockOverhead, ErrHeader)
	}
	plain := full * PlainBlockSize
	if rest > 0 {
		plain += rest - BlockOverhead
	}
	return plain, nil
}

// BlockOfPlainOffset returns the block holding plaintext offset plainOff.
func BlockOfPlainOffset(plainOff uint64) uint64 { return plainOff / PlainBlockSize }

// PlainOffsetOfBlock returns the plaintext offset where block starts.
func PlainOffsetOfBlock(block uint64) uint64 { return block * PlainBlockSize }

// CipherOffsetOfBlock returns the backing file offset where block is stored.
// It is exact for every block of an object of at most MaxPlainSize bytes.
func CipherOffsetOfBlock(block uint64) uint64 {
	return HeaderRegionSize + block*CipherBlockSize
}

// BlockRange returns the first block and the number of blocks touched by the
// plaintext range [plainOff, plainOff+length). A zero length touches none. A
// range running past 2^64-1 is cut there rather than wrapped around.
func BlockRange(plainOff, length uint64) (first, count uint64) {
	first = BlockOfPlainOffset(plainOff)
	if length == 0 {
		return first, 0
	}
	end := plainOff + length - 1 // last byte of the range
	if end < plainOff {
		end = math.MaxUint64
	}
	return first, BlockOfPlainOffset(end) - first + 1
}

// PlainBlocks returns how many blocks (the last possibly partial) an object
// of plainSize bytes has.
func PlainBlocks(plainSize uint64) uint64 {
	return (plainSize + PlainBlockSize - 1) / PlainBlockSize
}
