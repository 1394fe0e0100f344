package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fakeKeys is an in-memory KMS.
type fakeKeys struct {
	mu    sync.Mutex
	keys  map[string]objcrypt.Key
	names map[string]string // id -> the name it was created under
	n     int
	fail  error // returned by KEK when set
	// delay makes KEK take this long, or fail with the context's error
	// if the context ends first (a slow KMS).
	delay time.Duration
}

func newFakeKeys() *fakeKeys {
	return &fakeKeys{keys: map[string]objcrypt.Key{}, names: map[string]string{}}
}

func (k *fakeKeys) KEK(ctx context.Context, id string) (objcrypt.Key, error) {
	k.mu.Lock()
	delay := k.delay
	k.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("fake KMS: %w", ctx.Err())
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return nil, k.fail
	}
	key, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("fake KMS: no key %q", id)
	}
	return append(objcrypt.Key(nil), key...), nil
}

func (k *fakeKeys) NewKEK(ctx context.Context, name string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n++
	id := fmt.Sprintf("kek-%d", k.n)
	key := make(objcrypt.Key, objcrypt.KeySize)
	rand.Read(key)
	k.keys[id] = key
	k.names[id] = name
	return id, nil
}

func (k *fakeKeys) setFail(err error) {
	k.mu.Lock()
	k.fail = err
	k.mu.Unlock()
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testFS struct {
	t    *testing.T
	back string
	mnt  string
	root *Root
	srv  *fuse.Server
	keys *fakeKeys
	logs *syncBuffer
}

type testOpts struct {
	back       string // backing dir; default a new temp dir
	pool       *objcrypt.Pool
	pwrite     ioAtFunc  // replaces the pwrite(2) of whole-block writes and truncates into a block
	keys       *fakeKeys // the key server, to remount a backing dir; default a new one
	pread      ioAtFunc  // replaces the O_DIRECT backing reads' pread(2)
	allowOther bool      // let callers other than root use the mount
	// readAroundLimit is Config.ReadAroundLimit (0: the default).
	readAroundLimit int64
	// maxPathFDs is Config.MaxPathFDs (0: the default).
	maxPathFDs int
	// journal is Config.JournalPath: "" a new one in a temp dir, "-" none.
	journal string
	// vmRecord is the VM record file (Config.VMRecordPath); "": in memory.
	vmRecord string
	// readOnly mounts read-only (MountOptions.ReadOnly; give journal "-").
	readOnly bool
}

// newTestFS mounts a fresh cryptds over a temp backing directory and
// unmounts it at cleanup.
func newTestFS(t *testing.T, o testOpts) *testFS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mount tests need root (/dev/fuse, chown, O_TMPFILE linking)")
	}
	tf := &testFS{t: t, back: o.back, mnt: t.TempDir(), keys: o.keys, logs: &syncBuffer{}}
	if tf.keys == nil {
		tf.keys = newFakeKeys()
	}
	if tf.back == "" {
		tf.back = t.TempDir()
	}
	cfg := Config{
		Backing:     tf.back,
		Keys:        tf.keys,
		Pool:        o.pool,
		Logger:      slog.New(slog.NewTextHandler(tf.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		DatastoreID: "ds1",
		KMSName:     "fake",

		ReadAroundLimit: o.readAroundLimit,
		MaxPathFDs:      o.maxPathFDs,
		VMRecordPath:    o.vmRecord,
	}
	switch o.journal {
	case "":
		cfg.JournalPath = filepath.Join(t.TempDir(), "journal")
	case "-": // none
	default:
		cfg.JournalPath = o.journal
	}
	r, err := NewRoot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.pwrite != nil {
		r.pwrite = o.pwrite
	}
	if o.pread != nil {
		r.pread = o.pread
	}
	srv, err := MountRoot(tf.mnt, r, MountOptions{AllowOther: o.allowOther, ReadOnly: o.readOnly, Debug: os.Getenv("CRYPTDS_FUSE_DEBUG") != ""})
	if err != nil {
		t.Fatal(err)
	}
	tf.root, tf.srv = r, srv
	t.Cleanup(func() {
		var err error
		for i := 0; i < 50; i++ {
			if err = srv.Unmount(); err == nil {
				srv.Wait()
				if err := r.Close(); err != nil {
					t.Errorf("close %s: %v", tf.mnt, err)
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("unmount %s: %v", tf.mnt, err)
	})
	return tf
}

// encDir creates an encrypted VM directory through the mount.
func (tf *testFS) encDir(name string) string {
	tf.t.Helper()
	p := filepath.Join(tf.mnt, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		tf.t.Fatal(err)
	}
	if err := unix.Setxattr(p, xattrPolicy, []byte("encrypted"), 0); err != nil {
		tf.t.Fatalf("set policy on %s: %v", p, err)
	}
	return p
}

func (tf *testFS) m(rel string) string { return filepath.Join(tf.mnt, rel) }
func (tf *testFS) b(rel string) string { return filepath.Join(tf.back, rel) }

func mustWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func isEncryptedBacking(t *testing.T, path string) bool {
	t.Helper()
	_, err := unix.Getxattr(path, xattrHeader, nil)
	return err == nil
}

// waitReleased waits (bounded) until the kernel's asynchronous RELEASE of
// every encrypted handle has arrived, so the next open builds its object
// state afresh (headers re-read, keys fetched) instead of sharing the
// state of a file that was just closed.
func (tf *testFS) waitReleased() {
	tf.t.Helper()
	for i := 0; tf.root.Stats().OpenEncryptedHandles != 0; i++ {
		if i == 500 {
			tf.t.Fatalf("%d encrypted handles still open", tf.root.Stats().OpenEncryptedHandles)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dropMountCache evicts the mount's cached pages of path, as memory
// pressure would: the page cache now outlives writes and opens.
func dropMountCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise %s: %v", path, err)
	}
}

// inBackground runs fn on n goroutines over and over, until fn returns
// false or the test ends (before the mount goes away: cleanups run last
// first).
func inBackground(t *testing.T, n int, fn func() bool) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !fn() {
					return
				}
			}
		}()
	}
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
}

// vmAndPlain are a file in an encrypted directory and one in a plain
// directory of newVMAndPlainFS.
var vmAndPlain = []string{"vm/disk", "plain/disk"}

// newVMAndPlainFS mounts a test filesystem with an encrypted directory vm
// and a plain directory plain.
func newVMAndPlainFS(t *testing.T) *testFS {
	t.Helper()
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	return tf
}

// handleKinds are the open flags of the two kinds of handles.
var handleKinds = []struct {
	name  string
	flags int
}{{"O_DIRECT", syscall.O_DIRECT}, {"buffered", 0}}
