package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cryptds/cryptds/keyring"
)

func desc(sub, name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, sub, name), help, nil, nil)
}

var (
	// Descriptors are immutable after construction; sharing them is safe.
	fsBlocksEnc = desc("fs", "blocks_encrypted_total", "4 KiB blocks sealed (edge-block rewrites included).")
	fsBytesEnc  = desc("fs", "bytes_encrypted_total", "Plaintext bytes encrypted.")
	fsBlocksDec = desc("fs", "blocks_decrypted_total", "4 KiB blocks opened (holes included).")
	fsBytesDec  = desc("fs", "bytes_decrypted_total", "Plaintext bytes decrypted.")
	fsAuthFail  = desc("fs", "auth_failures_total", "Reads refused because a block did not authenticate (tampering or corruption).")
	fsKeyErr    = desc("fs", "key_errors_total", "Opens refused because the VM's key was unavailable or wrong.")
	fsHdrErr    = desc("fs", "header_errors_total", "Opens refused because an object header was malformed or its copies disagreed.")
	fsDirectRd  = desc("fs", "direct_read_bytes_total", "Stored bytes read from the backing store with O_DIRECT (large reads of O_DIRECT handles).")
	fsDirectWr  = desc("fs", "direct_write_bytes_total", "Stored bytes written to the backing store with O_DIRECT (large aligned writes of O_DIRECT handles).")
	fsReadArnd  = desc("fs", "read_arounds_total", "Small buffered reads that also started reading their neighbouring stored blocks.")
	fsCacheFill = desc("fs", "cache_fills_total", "Windows of encrypted files without writers stored into the mount's page cache after a small read.")
	fsCacheDrop = desc("fs", "cache_drops_total", "Page-cache drops for files changed behind the mount or written with O_DIRECT while buffered handles were open.")
	fsOpenEnc   = desc("fs", "open_encrypted_handles", "Encrypted file handles open now.")

	krHits    = desc("keyring", "memory_hits_total", "Key lookups answered from the in-memory cache.")
	krMisses  = desc("keyring", "misses_total", "Key lookups the in-memory cache could not answer.")
	krBadger  = desc("keyring", "disk_cache_hits_total", "Misses answered from the badger cache.")
	krFetch   = desc("keyring", "fetches_total", "Key fetches from the KMS (background refreshes included).")
	krFetchE  = desc("keyring", "fetch_errors_total", "Key fetches from the KMS that failed.")
	krEvict   = desc("keyring", "evictions_total", "Keys dropped because the KMS refused them or on request.")
	krExpire  = desc("keyring", "expirations_total", "Keys dropped because their TTL ran out.")
	krKeys    = desc("keyring", "keys", "Keys held in memory now.")
	krLatency = desc("keyring", "fetch_duration_seconds", "Duration of key fetches from the KMS (errors included).")
)

// fsCollector turns one fs.Stats snapshot per scrape into metrics.
type fsCollector struct{ src FSStats }

func (c fsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fsBlocksEnc, fsBytesEnc, fsBlocksDec, fsBytesDec, fsAuthFail, fsKeyErr, fsHdrErr, fsDirectRd, fsDirectWr, fsReadArnd, fsCacheFill, fsCacheDrop, fsOpenEnc} {
		ch <- d
	}
}

func (c fsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(fsBlocksEnc, s.BlocksEncrypted)
	counter(fsBytesEnc, s.BytesEncrypted)
	counter(fsBlocksDec, s.BlocksDecrypted)
	counter(fsBytesDec, s.BytesDecrypted)
	counter(fsAuthFail, s.AuthFailures)
	counter(fsKeyErr, s.KeyErrors)
	counter(fsHdrErr, s.HeaderErrors)
	counter(fsDirectRd, s.BytesReadDirect)
	counter(fsDirectWr, s.BytesWrittenDirect)
	counter(fsReadArnd, s.ReadArounds)
	counter(fsCacheFill, s.CacheFills)
	counter(fsCacheDrop, s.CacheDrops)
	ch <- prometheus.MustNewConstMetric(fsOpenEnc, prometheus.GaugeValue, float64(s.OpenEncryptedHandles))
}

// keyCollector turns one keyring.Stats snapshot per scrape into metrics.
type keyCollector struct{ src KeyStats }

func (c keyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{krHits, krMisses, krBadger, krFetch, krFetchE, krEvict, krExpire, krKeys, krLatency} {
		ch <- d
	}
}

func (c keyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(krHits, s.MemoryHits)
	counter(krMisses, s.Misses)
	counter(krBadger, s.BadgerHits)
	counter(krFetch, s.Fetches)
	counter(krFetchE, s.FetchErrors)
	counter(krEvict, s.Evictions)
	counter(krExpire, s.Expirations)
	ch <- prometheus.MustNewConstMetric(krKeys, prometheus.GaugeValue, float64(s.Keys))
	ch <- constHistogram(krLatency, s.FetchLatency)
}

// constHistogram converts keyring's cumulative histogram to Prometheus's.
func constHistogram(d *prometheus.Desc, h keyring.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Buckets))
	for _, b := range h.Buckets {
		buckets[b.UpperBound.Seconds()] = b.Count
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets)
}
