package fs

import "sync/atomic"

// Stats is a snapshot of the mount's counters, for metrics exporters.
type Stats struct {
	BlocksEncrypted      uint64 // blocks sealed (including edge-block rewrites)
	BytesEncrypted       uint64 // plaintext bytes sealed
	BlocksDecrypted      uint64 // blocks opened (holes included)
	BytesDecrypted       uint64 // plaintext bytes opened
	AuthFailures         uint64 // reads refused because a block did not authenticate
	KeyErrors            uint64 // opens refused because the KEK or DEK was unavailable or wrong
	HeaderErrors         uint64 // opens refused because a header was malformed or the two copies disagreed
	OpenEncryptedHandles int64  // encrypted file handles open right now
	BytesReadDirect      uint64 // stored bytes read with O_DIRECT for large reads of O_DIRECT handles
	BytesWrittenDirect   uint64 // stored bytes written with O_DIRECT for large aligned writes of O_DIRECT handles
	ReadArounds          uint64 // small buffered reads that read their block's neighbours too (readaround.go)
	CacheFills           uint64 // windows of read-only files stored into the mount's page cache (fillaround.go)
	CacheDrops           uint64 // page-cache drops for changes behind the mount and after O_DIRECT writes (pagecache.go)
}

type counters struct {
	blocksEnc, bytesEnc, blocksDec, bytesDec atomic.Uint64
	authFail, keyErr, hdrErr                 atomic.Uint64
	openEnc                                  atomic.Int64
	directRead, readAround                   atomic.Uint64
	cacheFills, directWrite, cacheDrops      atomic.Uint64
}

// Stats returns the current counters.
func (r *Root) Stats() Stats {
	c := &r.stats
	return Stats{
		BlocksEncrypted:      c.blocksEnc.Load(),
		BytesEncrypted:       c.bytesEnc.Load(),
		BlocksDecrypted:      c.blocksDec.Load(),
		BytesDecrypted:       c.bytesDec.Load(),
		AuthFailures:         c.authFail.Load(),
		KeyErrors:            c.keyErr.Load(),
		HeaderErrors:         c.hdrErr.Load(),
		OpenEncryptedHandles: c.openEnc.Load(),
		BytesReadDirect:      c.directRead.Load(),
		BytesWrittenDirect:   c.directWrite.Load(),
		ReadArounds:          c.readAround.Load(),
		CacheFills:           c.cacheFills.Load(),
		CacheDrops:           c.cacheDrops.Load(),
	}
}

func (c *counters) encrypted(plainBytes int) {
	c.blocksEnc.Add(uint64((plainBytes + 4095) / 4096))
	c.bytesEnc.Add(uint64(plainBytes))
}

func (c *counters) decrypted(plainBytes int) {
	c.blocksDec.Add(uint64((plainBytes + 4095) / 4096))
	c.bytesDec.Add(uint64(plainBytes))
}
