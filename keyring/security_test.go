package keyring_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
)

// TestDiskSurvivesRestart is vSphere's "key persistence": with the disk
// cache, a host that restarts while the KMS is down still opens its VMs.
func TestDiskSurvivesRestart(t *testing.T) {
	e := newEnv(t, keyring.CacheDisk)
	e.opts.Refresh = 10 * time.Minute
	r, err := keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := e.kms.add("vm1"), e.kms.add("vm2")
	mustKEK(t, r, "vm1", k1)
	e.clk.Advance(30 * time.Minute)
	mustKEK(t, r, "vm2", k2)
	keyring.WaitRefreshes(r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	e.kms.setDown(kmipclient.ErrUnavailable)
	fetches := e.kms.gets.Load()
	r = e.open(t)
	mustKEK(t, r, "vm1", k1)
	mustKEK(t, r, "vm2", k2)
	keyring.WaitRefreshes(r) // the confirmations from the KMS fail: still served
	mustKEK(t, r, "vm1", k1)
	if s := r.Stats(); s.BadgerHits != 2 || s.MemoryHits != 1 {
		t.Fatalf("after restart: %+v, want 2 badger hits then a memory hit", s)
	}
	if got := e.kms.gets.Load() - fetches; got != 2 { // the two background confirmations
		t.Fatalf("%d KMS calls after restart, want 2 background refreshes", got)
	}
	if _, err := r.KEK(context.Background(), "vm3"); !errors.Is(err, keyring.ErrKeyUnavailable) {
		t.Fatalf("uncached key: %v", err)
	}

	// TTLs persisted: vm1 (fetched at 0) expires at 60 min, vm2 at 90.
	e.clk.Advance(31 * time.Minute)
	if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
		t.Fatalf("vm1 past its TTL: %v", err)
	}
	mustKEK(t, r, "vm2", k2)
}

// TestDiskRestartSeesRevocation: a key revoked while the host was down is
// served from the disk cache at most until the background confirmation,
// then evicted everywhere.
func TestDiskRestartSeesRevocation(t *testing.T) {
	e := newEnv(t, keyring.CacheDisk)
	e.opts.Refresh = 10 * time.Minute
	r, err := keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	k1 := e.kms.add("vm1")
	mustKEK(t, r, "vm1", k1)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	e.kms.refuse("vm1", kmipclient.ErrNotUsable)
	r, err = keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	mustKEK(t, r, "vm1", k1)
	keyring.WaitRefreshes(r)
	if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnusable) {
		t.Fatalf("revoked key after confirmation: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	e.kms.setDown(kmipclient.ErrUnavailable)
	r = e.open(t)
	if _, err := r.KEK(context.Background(), "vm1"); !errors.Is(err, keyring.ErrKeyUnavailable) {
		t.Fatalf("revoked key came back from disk: %v", err)
	}
}

// TestDiskFilesHoldNoKeyBytes searches every file badger wrote for every
// cached key: badger's encryption must hide them all.
func TestDiskFilesHoldNoKeyBytes(t *testing.T) {
	e := newEnv(t, keyring.CacheDisk)
	r, err := keyring.Open(e.kms, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for i := range 8 {
		id := fmt.Sprintf("cryptds/ds1/vm%d", i)
		k := e.kms.add(id)
		keys = append(keys, k)
		mustKEK(t, r, id, k)
	}
	hostKey, err := os.ReadFile(e.opts.HostKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	// While open (the write-ahead log, as after a crash) and after Close
	// (flushed to tables).
	if n := searchDir(t, e.opts.Dir, append(keys, hostKey)); n != 0 {
		t.Fatalf("%d keys found in the open encrypted cache", n)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n := searchDir(t, e.opts.Dir, append(keys, hostKey)); n != 0 {
		t.Fatalf("%d keys found in the closed encrypted cache", n)
	}

	// Control: the same entries in a badger configured the same way but
	// unencrypted are found, so the search above would have seen a leak.
	dir := t.TempDir()
	db, err := badger.Open(keyring.PlainBadgerOptionsForTest(dir))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		for i, k := range keys {
			v := keyring.EncodeValueForTest(k, time.Now().Add(time.Hour).UnixNano())
			if err := txn.Set(fmt.Appendf(nil, "%svm%d", keyring.KeyPrefixForTest, i), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := searchDir(t, dir, keys); n != len(keys) {
		t.Fatalf("control: found %d of %d keys in an open unencrypted badger; the search is blind", n, len(keys))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n := searchDir(t, dir, keys); n != len(keys) {
		t.Fatalf("control: found %d of %d keys in a closed unencrypted badger; the search is blind", n, len(keys))
	}
}

// searchDir returns how many of needles occur in some file under dir.
func searchDir(t *testing.T, dir string, needles [][]byte) int {
	t.Helper()
	seen := make([]bool, len(needles))
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, n := range needles {
			if bytes.Contains(b, n) {
				seen[i] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no files under %s", dir)
	}
	found := 0
	for _, s := range seen {
		if s {
			found++
		}
	}
	return found
}

// TestNothingOnDisk: in memory and off modes the ring writes nothing
// anywhere: not Dir, not the host key file, not the working directory,
// HOME or TMPDIR. Not parallel: it changes the working directory.
func TestNothingOnDisk(t *testing.T) {
	for _, mode := range []keyring.CacheMode{keyring.CacheMemory, keyring.CacheOff} {
		t.Run(mode.String(), func(t *testing.T) {
			base, cwd, home, tmp := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
			t.Chdir(cwd)
			t.Setenv("HOME", home)
			t.Setenv("TMPDIR", tmp)
			kms, clk := newKMS(), newClock()
			r, err := keyring.Open(kms, keyring.Options{
				Cache:       mode,
				Dir:         filepath.Join(base, "cache"),
				HostKeyFile: filepath.Join(base, "hostkey"),
				Refresh:     time.Minute,
				Now:         clk.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				id := fmt.Sprintf("vm%d", i)
				mustKEK(t, r, id, kms.add(id))
			}
			clk.Advance(2 * time.Minute)
			mustKEK(t, r, "vm1", kms.key("vm1"))
			keyring.WaitRefreshes(r)
			r.Evict("vm2")
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{base, cwd, home, tmp} {
				ents, err := os.ReadDir(d)
				if err != nil {
					t.Fatal(err)
				}
				for _, ent := range ents {
					t.Errorf("%s mode wrote %s", mode, filepath.Join(d, ent.Name()))
				}
			}
		})
	}
}

// TestNoKeyBytesInLogs runs the noisy paths (refresh failures, evictions,
// badger at DEBUG) and searches the log for every key in every encoding.
func TestNoKeyBytesInLogs(t *testing.T) {
	forEachMode(t, func(t *testing.T, e *env) {
		var (
			mu  sync.Mutex
			buf bytes.Buffer
		)
		e.opts.Logger = slog.New(slog.NewTextHandler(&lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
		e.opts.Refresh = 10 * time.Minute
		r, err := keyring.Open(e.kms, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		var keys [][]byte
		for i := range 4 {
			id := fmt.Sprintf("vm%d", i)
			keys = append(keys, e.kms.add(id))
			k, err := r.KEK(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			r.Stats()
			e.opts.Logger.Info("caller logs its key", "key", k, "err", err) // redacted by objcrypt.Key
		}
		e.kms.setDown(kmipclient.ErrUnavailable)
		e.clk.Advance(15 * time.Minute)
		mustKEK(t, r, "vm0", keys[0])
		keyring.WaitRefreshes(r)
		e.kms.setDown(nil)
		e.kms.refuse("vm1", kmipclient.ErrNotUsable)
		e.clk.Advance(2 * time.Minute)
		mustKEK(t, r, "vm1", keys[1])
		keyring.WaitRefreshes(r)
		r.Evict("vm2")
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}

		mu.Lock()
		out := buf.String()
		mu.Unlock()
		if !strings.Contains(out, "refresh failed") || !strings.Contains(out, "evicted") {
			t.Fatalf("the scenario did not log what it should have:\n%s", out)
		}
		for i, k := range keys {
			for _, enc := range []string{string(k), hex.EncodeToString(k), strings.ToUpper(hex.EncodeToString(k)),
				base64.StdEncoding.EncodeToString(k), base64.RawURLEncoding.EncodeToString(k),
				strings.Trim(fmt.Sprint([]byte(k)), "[]")} {
				if strings.Contains(out, enc) {
					t.Fatalf("key %d appears in the log", i)
				}
			}
		}
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
