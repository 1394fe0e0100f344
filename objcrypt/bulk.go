package objcrypt

// EncryptBlocks appends the stored form of plain to dst. plain is the
// plaintext of consecutive blocks starting at firstBlock; every block but the
// last must be full. pool may be nil (everything inline); requests of at
// least the pool's threshold are spread over its workers. Give dst enough
// capacity (len(dst)+len(plain)+blocks*BlockOverhead) to allocate nothing.
// On failure (the random source failed) it returns dst followed by the
// blocks encrypted before the failing batch of nonces.
func (o *Object) EncryptBlocks(dst, plain []byte, firstBlock uint64, pool *Pool) ([]byte, error) {
	if pool != nil && len(plain) >= pool.threshold() {
		return pool.encrypt(o, dst, plain, firstBlock)
	}
	return o.encryptRun(dst, plain, firstBlock)
}

// DecryptBlocks appends the plaintext of consecutive stored blocks (starting
// at firstBlock; only the last may be short) to dst. On failure it returns
// the *BlockError of the first block that failed, with dst followed by the
// plaintext of the blocks before it (so a caller may serve a short read), the
// same with or without a pool.
func (o *Object) DecryptBlocks(dst, stored []byte, firstBlock uint64, pool *Pool) ([]byte, error) {
	if pool != nil && len(stored) >= pool.threshold()+pool.threshold()/PlainBlockSize*BlockOverhead {
		return pool.decrypt(o, dst, stored, firstBlock)
	}
	var err error
	for b := firstBlock; len(stored) > 0; b++ {
		n := min(len(stored), CipherBlockSize)
		if dst, err = o.DecryptBlock(dst, stored[:n], b); err != nil {
			return dst, err
		}
		stored = stored[n:]
	}
	return dst, nil
}
