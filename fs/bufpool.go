package fs

import (
	"sync"

	"github.com/cryptds/cryptds/objcrypt"
)

// Buffer classes: most VM I/O is 4-64 KiB, bulk I/O is up to max_write
// (1 MiB) plus the two edge blocks. Two classes keep small requests from
// pinning megabyte buffers while bulk requests never allocate.
const (
	smallBuf = 16 * objcrypt.CipherBlockSize
	largeBuf = (maxWrite/objcrypt.PlainBlockSize + 2) * objcrypt.CipherBlockSize
)

// bufPools keeps plaintext and ciphertext buffers apart: plaintext buffers
// are cleared when returned (so they come back zeroed, which the edge-block
// merge relies on, and no plaintext lingers), ciphertext buffers are not.
type bufPools struct {
	small, large             sync.Pool // plaintext, zeroed
	cipherSmall, cipherLarge sync.Pool // ciphertext, dirty
}

// get returns a buffer of length n. Buffers larger than the large class are
// allocated (only truncate/fallocate of huge ranges can ask for them).
func (p *bufPools) get(n int) *[]byte { return getFrom(&p.small, &p.large, n) }

// getCipher returns a buffer for ciphertext; its content is undefined.
func (p *bufPools) getCipher(n int) *[]byte { return getFrom(&p.cipherSmall, &p.cipherLarge, n) }

func getFrom(small, large *sync.Pool, n int) *[]byte {
	var pool *sync.Pool
	var size int
	switch {
	case n <= smallBuf:
		pool, size = small, smallBuf
	case n <= largeBuf:
		pool, size = large, largeBuf
	default:
		b := make([]byte, n)
		return &b
	}
	if v, ok := pool.Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, size)
	b = b[:n]
	return &b
}

// put returns a plaintext buffer from get. Its used length is cleared
// first so no plaintext lingers in pooled memory longer than a request (and
// the next get finds zeros); callers never reslice *b beyond what get
// returned.
func (p *bufPools) put(b *[]byte) {
	clear(*b)
	putTo(&p.small, &p.large, b)
}

// putCipher returns a buffer from getCipher without clearing it: it held
// only ciphertext, which is what the backing store holds anyway.
func (p *bufPools) putCipher(b *[]byte) { putTo(&p.cipherSmall, &p.cipherLarge, b) }

func putTo(small, large *sync.Pool, b *[]byte) {
	switch cap(*b) {
	case smallBuf:
		small.Put(b)
	case largeBuf:
		large.Put(b)
	}
}
