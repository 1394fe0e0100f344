package objcrypt

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// Object encrypts and decrypts the blocks of one object. It holds the
// object's AEAD, so the hot path does no key lookup or derivation. It is safe
// for concurrent use as long as rand is (crypto/rand is).
type Object struct {
	id      ObjectID
	aead    cipher.AEAD
	rand    io.Reader
	sysRand bool // rand is crypto/rand: nonces may come from a pooled batch
}

// NewObject derives the object key from dek and id and prepares the block
// AEAD. rand supplies block nonces; nil means crypto/rand. The derived key is
// wiped once the AES key schedule has been built.
func NewObject(dek []byte, id ObjectID, rnd io.Reader) (*Object, error) {
	key, err := DeriveObjectKey(dek, id)
	if err != nil {
		return nil, err
	}
	defer key.Zero()
	aead, err := newGCM(key, NonceSize)
	if err != nil {
		return nil, fmt.Errorf("object AEAD: %w", err)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	return &Object{id: id, aead: aead, rand: rnd, sysRand: rnd == rand.Reader}, nil
}

// ID returns the object id.
func (o *Object) ID() ObjectID { return o.id }

// blockAADSize is the length of a block's associated data.
const blockAADSize = 8 + ObjectIDSize

// aadPool recycles the per-block AAD scratch. The AAD is handed to the
// cipher.AEAD interface, so a stack array would escape and cost one heap
// allocation per block; a pooled one costs none in the steady state.
var aadPool = sync.Pool{New: func() any { return new([blockAADSize]byte) }}

// blockAAD is block number (u64 BE) ‖ object id: a block cannot be moved to
// another position or another object.
func (o *Object) blockAAD(buf *[blockAADSize]byte, block uint64) []byte {
	binary.BigEndian.PutUint64(buf[:8], block)
	copy(buf[8:], o.id[:])
	return buf[:]
}

// EncryptBlock appends the stored form of plaintext block number block
// (nonce ‖ ciphertext ‖ tag) to dst and returns the extended slice. plain
// must hold 1..PlainBlockSize bytes; only the last block of an object may be
// short. Passing a longer or empty block is a programming error and panics.
func (o *Object) EncryptBlock(dst, plain []byte, block uint64) ([]byte, error) {
	if len(plain) == 0 || len(plain) > PlainBlockSize {
		panic(fmt.Sprintf("objcrypt: internal error: EncryptBlock of %d bytes", len(plain)))
	}
	return o.encryptRun(dst, plain, block)
}

// nonceBatch is how many block nonces one random read fetches: a 1 MiB
// request costs 4 reads instead of 256, which is most of what the format
// adds to bare AES-GCM (BenchmarkNonceRead).
const nonceBatch = 64

// scratch is per-call working memory, pooled because the AEAD interface
// makes anything passed to it escape to the heap. It also carries nonces
// read ahead: nonces[next:filled] are unused, so with the system random
// source a one-block write costs a random read only every nonceBatch
// blocks. Each is handed out once; nonces are public, so keeping them in
// memory beforehand costs nothing.
type scratch struct {
	aad          [blockAADSize]byte
	nonces       [nonceBatch * NonceSize]byte
	next, filled int // in nonces
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// nonce returns the next unused nonce in s, refilling s from o's random
// source when it is spent. An injected source is asked for exactly the
// blocksLeft nonces of the current run (at most a batch), so its bytes
// are consumed in block order as one read per block would and test vectors
// stay byte-exact; crypto/rand always fills a whole batch.
func (o *Object) nonce(s *scratch, blocksLeft int) ([]byte, error) {
	if s.next == s.filled {
		n := nonceBatch
		if !o.sysRand {
			n = min(blocksLeft, nonceBatch)
		}
		if _, err := io.ReadFull(o.rand, s.nonces[:n*NonceSize]); err != nil {
			s.next, s.filled = 0, 0
			return nil, err
		}
		s.next, s.filled = 0, n
	}
	s.next++
	return s.nonces[(s.next-1)*NonceSize : s.next*NonceSize], nil
}

// encryptRun appends the stored form of consecutive plaintext blocks
// starting at block (every block but the last full) to dst, reading their
// nonces in batches.
func (o *Object) encryptRun(dst, plain []byte, block uint64) ([]byte, error) {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	if !o.sysRand {
		s.next = s.filled // read-ahead from crypto/rand is not this source's
	}
	for len(plain) > 0 {
		nonce, err := o.nonce(s, (len(plain)+PlainBlockSize-1)/PlainBlockSize)
		if err != nil {
			return dst, fmt.Errorf("block %d nonce: %w", block, err)
		}
		m := min(len(plain), PlainBlockSize)
		at := len(dst)
		dst = append(dst, nonce...)
		dst = o.aead.Seal(dst, dst[at:at+NonceSize], plain[:m], o.blockAAD(&s.aad, block))
		plain = plain[m:]
		block++
	}
	return dst, nil
}

// DecryptBlock appends the plaintext of stored block number block to dst. A
// stored block of all zero bytes is a hole and yields that many plaintext
// zero bytes (len(stored)-BlockOverhead). Anything that does not
// authenticate returns a *BlockError wrapping ErrAuth, or ErrHeader for a
// stored block too short to hold a nonce, a tag and one byte.
func (o *Object) DecryptBlock(dst, stored []byte, block uint64) ([]byte, error) {
	if len(stored) <= BlockOverhead || len(stored) > CipherBlockSize {
		return dst, &BlockError{Block: block, Err: fmt.Errorf("stored block of %d bytes: %w", len(stored), ErrHeader)}
	}
	if isZero(stored) {
		// append of make is compiled to an in-place zeroing extension
		return append(dst, make([]byte, len(stored)-BlockOverhead)...), nil
	}
	aad := aadPool.Get().(*[blockAADSize]byte)
	out, err := o.aead.Open(dst, stored[:NonceSize], stored[NonceSize:], o.blockAAD(aad, block))
	aadPool.Put(aad)
	if err != nil {
		return dst, &BlockError{Block: block, Err: ErrAuth}
	}
	return out, nil
}

// zeroBlock is compared against by isZero; it is never written.
var zeroBlock [CipherBlockSize]byte

// isZero reports whether b is all zero bytes. Every real stored block starts
// with a random nonce, so the first word almost always settles it; a hole is
// confirmed with the runtime's vectorised memequal, several times faster
// than a Go word loop (BenchmarkIsZero).
func isZero(b []byte) bool {
	if len(b) >= 8 && binary.NativeEndian.Uint64(b) != 0 {
		return false
	}
	for len(b) > len(zeroBlock) {
		if !bytes.Equal(b[:len(zeroBlock)], zeroBlock[:]) {
			return false
		}
		b = b[len(zeroBlock):]
	}
	return bytes.Equal(b, zeroBlock[:len(b)])
}

// NewObjectID returns a random object id from rand (nil: crypto/rand).
func NewObjectID(rnd io.Reader) (ObjectID, error) {
	var id ObjectID
	if rnd == nil {
		rnd = rand.Reader
	}
	if _, err := io.ReadFull(rnd, id[:]); err != nil {
		return id, fmt.Errorf("object id: %w", err)
	}
	return id, nil
}

// NewVMID returns a random VM id from rand (nil: crypto/rand).
func NewVMID(rnd io.Reader) (VMID, error) {
	var id VMID
	if rnd == nil {
		rnd = rand.Reader
	}
	if _, err := io.ReadFull(rnd, id[:]); err != nil {
		return id, fmt.Errorf("vm id: %w", err)
	}
	return id, nil
}
