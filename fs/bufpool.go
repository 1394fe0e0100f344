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

type bufPools struct {
	small, large sync.Pool
}

// get returns a buffer of length n. Buffers larger than the large class are
// allocated (only truncate/fallocate of huge ranges can ask for them).
func (p *bufPools) get(n int) *[]byte {
	var pool *sync.Pool
	var size int
	switch {
	case n <= smallBuf:
		pool, size = &p.small, smallBuf
	case n <= largeBuf:
		pool, size = &p.large, largeBuf
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

// put returns a buffer. Its used length is cleared first so no plaintext
// lingers in pooled memory longer than a request; callers never reslice
// *b beyond what get returned.
func (p *bufPools) put(b *[]byte) {
	clear(*b)
	c := cap(*b)
	switch c {
	case smallBuf:
		p.small.Put(b)
	case largeBuf:
		p.large.Put(b)
	}
}
