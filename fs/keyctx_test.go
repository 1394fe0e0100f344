package fs

import (
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKeyFetchSurvivesInterrupt: a signal to the thread that opens an
// encrypted file makes the kernel send FUSE INTERRUPT while the daemon
// fetches the file's KEK. The open must still succeed: the fetch is not
// the caller's to cancel (keyContext). Before the fix, every Go client
// (the runtime preempts goroutines with SIGURG) could see EIO here.
func TestKeyFetchSurvivesInterrupt(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	vm := tf.encDir("vm")
	path := filepath.Join(vm, "disk.raw")
	want := randBytes(10000)
	mustWrite(t, path, want)
	tf.waitReleased()
	tf.keys.mu.Lock()
	tf.keys.delay = 300 * time.Millisecond
	tf.keys.mu.Unlock()

	var tid atomic.Int64
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid.Store(int64(unix.Gettid()))
		f, err := os.Open(path) // retries EINTR, so only a real failure shows
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	signals := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("open while its thread took %d signals: %v\n%s", signals, err, tf.logs.String())
			}
			if signals < 10 {
				t.Fatalf("only %d signals reached the opening thread", signals)
			}
			if got := mustRead(t, path); string(got) != string(want) {
				t.Fatal("content changed")
			}
			return
		case <-tick.C:
			if id := tid.Load(); id != 0 {
				if err := unix.Tgkill(os.Getpid(), int(id), unix.SIGURG); err != nil {
					t.Fatal(err)
				}
				signals++
			}
		}
	}
}
