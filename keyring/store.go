package keyring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/cryptds/cryptds/objcrypt"
)

// store is the badger layer behind the hot map. Every call is serialised by
// the Ring (Ring.smu), so store itself has no locks.
type store struct {
	db      *badger.DB
	hostKey []byte // owned; zeroed by close (badger reads it until then)
}

// keyPrefix namespaces KEK entries inside the badger database.
const keyPrefix = "kek/"

// Value layout: version(1) ‖ expiry, Unix nanoseconds by Options.Now (8,
// big-endian) ‖ key bytes. The expiry is ours because badger's own TTL only
// knows the wall clock and whole seconds; badger's TTL is still set, as a
// backstop that lets compaction drop entries nobody reads again.
const (
	valueVersion = 1
	valueHeader  = 1 + 8
)

// badgerOptions sets every option that matters to us explicitly rather than
// inheriting defaults that changed between badger majors (durability,
// logging) or that are sized for a database, not a few KiB of keys.
func badgerOptions(mode CacheMode, dir string, hostKey []byte, log *slog.Logger) badger.Options {
	var o badger.Options
	if mode == CacheDisk {
		o = badger.DefaultOptions(dir).
			WithEncryptionKey(hostKey).
			WithIndexCacheSize(1 << 20). // badger wants an index cache with encryption
			WithSyncWrites(true)         // a cached key survives a host crash
	} else {
		o = badger.DefaultOptions("").WithInMemory(true)
	}
	return o.
		WithLogger(badgerLogger{log}).
		WithMetricsEnabled(false).  // badger's metrics are process-global expvars
		WithDetectConflicts(false). // the Ring single-flights per key
		WithNumVersionsToKeep(1).
		WithCompression(options.None). // keys are random: nothing to gain
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithNumCompactors(2).
		WithBlockCacheSize(1 << 20).
		WithValueThreshold(1 << 10). // entries are ~41 bytes: always inline in the LSM tree
		WithValueLogFileSize(1 << 20)
}

// openStore opens the badger cache for mode; it returns nil, nil for
// CacheOff.
func openStore(o Options) (*store, error) {
	switch o.Cache {
	case CacheOff:
		return nil, nil
	case CacheMemory:
		db, err := badger.Open(badgerOptions(CacheMemory, "", nil, o.Logger))
		if err != nil {
			return nil, fmt.Errorf("keyring: open in-memory cache: %w", err)
		}
		return &store{db: db}, nil
	}
	if within(o.HostKeyFile, o.Dir) {
		return nil, fmt.Errorf("keyring: host key file %s is inside the cache directory %s; keep it elsewhere", o.HostKeyFile, o.Dir)
	}
	hk, err := loadHostKey(o.HostKeyFile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		clear(hk)
		return nil, fmt.Errorf("keyring: create cache directory: %w", err)
	}
	db, err := badger.Open(badgerOptions(CacheDisk, o.Dir, hk, o.Logger))
	if err != nil {
		clear(hk)
		if errors.Is(err, badger.ErrEncryptionKeyMismatch) {
			return nil, fmt.Errorf("keyring: cache at %s was written under a different host key than %s: %w", o.Dir, o.HostKeyFile, err)
		}
		return nil, fmt.Errorf("keyring: open disk cache at %s: %w", o.Dir, err)
	}
	return &store{db: db, hostKey: hk}, nil
}

// get returns a fresh copy of id's key and its expiry if present and not
// expired at now. An expired entry is deleted.
func (s *store) get(id string, now time.Time) (objcrypt.Key, int64, bool, error) {
	var (
		key objcrypt.Key
		exp int64
	)
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyPrefix + id))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != valueHeader+objcrypt.KeySize || v[0] != valueVersion {
				return fmt.Errorf("keyring: cached entry for KEK %q is malformed (%d bytes)", id, len(v))
			}
			exp = int64(binary.BigEndian.Uint64(v[1:valueHeader]))
			key = make(objcrypt.Key, objcrypt.KeySize)
			copy(key, v[valueHeader:])
			return nil
		})
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		return nil, 0, false, nil
	case err != nil:
		key.Zero()
		return nil, 0, false, fmt.Errorf("keyring: read cache: %w", err)
	case now.UnixNano() >= exp:
		key.Zero()
		return nil, 0, false, s.delete(id)
	}
	return key, exp, true, nil
}

// put stores key until exp (Unix nanoseconds by the Ring's clock).
func (s *store) put(id string, key objcrypt.Key, exp int64, now time.Time) error {
	ttl := time.Duration(exp - now.UnixNano())
	if ttl <= 0 {
		return nil
	}
	v := encodeValue(key, exp)
	defer clear(v) // badger copied it into its memtable by the time Update returns
	err := s.db.Update(func(txn *badger.Txn) error {
		// Whole seconds, rounded up, so the backstop never fires first.
		return txn.SetEntry(badger.NewEntry([]byte(keyPrefix+id), v).WithTTL(ttl + time.Second))
	})
	if err != nil {
		return fmt.Errorf("keyring: write cache: %w", err)
	}
	return nil
}

// capExpiry brings the expiry of every stored key later than limit
// forward to limit (a shortened TTL), so a key cannot be served from disk
// after a restart for longer than the TTL now in force allows.
func (s *store) capExpiry(limit int64, now time.Time) error {
	if limit <= now.UnixNano() {
		limit = now.UnixNano() + 1
	}
	var values [][]byte
	defer func() {
		for _, v := range values {
			clear(v)
		}
	}()
	err := s.db.Update(func(txn *badger.Txn) error {
		var entries []*badger.Entry
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyPrefix)})
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			err := item.Value(func(v []byte) error {
				if len(v) != valueHeader+objcrypt.KeySize || v[0] != valueVersion {
					return nil // get reports and skips it
				}
				if int64(binary.BigEndian.Uint64(v[1:valueHeader])) <= limit {
					return nil
				}
				nv := encodeValue(objcrypt.Key(v[valueHeader:]), limit)
				values = append(values, nv)
				ttl := time.Duration(limit - now.UnixNano())
				entries = append(entries, badger.NewEntry(item.KeyCopy(nil), nv).WithTTL(ttl+time.Second))
				return nil
			})
			if err != nil {
				it.Close()
				return err
			}
		}
		it.Close()
		for _, e := range entries {
			if err := txn.SetEntry(e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keyring: shorten cached expiries: %w", err)
	}
	return nil
}

func encodeValue(key objcrypt.Key, exp int64) []byte {
	v := make([]byte, valueHeader, valueHeader+len(key))
	v[0] = valueVersion
	binary.BigEndian.PutUint64(v[1:], uint64(exp))
	return append(v, key...)
}

func (s *store) delete(id string) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Delete([]byte(keyPrefix + id))
	})
	if err != nil {
		return fmt.Errorf("keyring: delete KEK %q from cache: %w", id, err)
	}
	return nil
}

// close closes badger and zeroes the host key. In memory mode badger's
// buffers are released to the garbage collector; badger offers no way to
// wipe them, which is why the hot map, not badger, is the zeroing owner.
func (s *store) close() error {
	err := s.db.Close()
	clear(s.hostKey)
	if err != nil {
		return fmt.Errorf("keyring: close cache: %w", err)
	}
	return nil
}

// badgerLogger adapts slog to badger.Logger. Badger is chatty at INFO
// (every open, replay and compaction), so INFO becomes DEBUG.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, format string, args []any) {
	if !b.l.Enabled(context.Background(), level) {
		return
	}
	b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "badger")
}

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }
