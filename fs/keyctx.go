package fs

import (
	"context"
	"time"
)

// keyWait bounds a key operation that no caller can cancel. The KMS client
// has its own per-request timeouts and fails over between endpoints; this
// is the backstop should a KMS accept a request and never answer.
const keyWait = 2 * time.Minute

// keyContext detaches a key operation from the FUSE request that asked for
// it. go-fuse cancels a request's context when the kernel sends INTERRUPT,
// which it does whenever the calling thread takes any signal while it
// waits: every Go client (restic, the Go runtime's preemption signal
// SIGURG) and any C client with a timer or SIGCHLD handler. A KEK fetch
// cancelled that way failed the open with EIO (found by the kill tests:
// after a remount the first open of a VM's file fetched its KEK and lost
// it to the test's own goroutine preemption), and, leading the keyring's
// single flight, failed every open waiting for the same key with it; a
// cancelled KEK create could leave an orphan key at the KMS. A fetch that
// finishes after its caller stopped caring still warms the cache.
func keyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), keyWait)
}
