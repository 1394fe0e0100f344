package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	cfs "github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/journal"
)

// previousDaemonWait bounds how long a mount waits for the daemon of a
// just unmounted mount of the same datastore to release its journal.
// umount(8) returns once the kernel has unmounted, before that daemon has
// noticed and exited (tens of milliseconds later), so `umount && mount`,
// `systemctl restart` and scripts found the journal still locked.
const previousDaemonWait = 30 * time.Second

// newRootAfterPrevious is cfs.NewRoot, waiting (bounded, and said in the
// log) while the journal is held by a daemon of this datastore that is no
// longer mounted anywhere: one still exiting after its unmount. A
// datastore mounted elsewhere fails at once: it would be served twice.
// mounted reports whether the datastore is mounted now.
func newRootAfterPrevious(ctx context.Context, cfg cfs.Config, mounted func() bool, log *slog.Logger) (*cfs.Root, error) {
	start := time.Now()
	waiting := false
	for {
		r, err := cfs.NewRoot(cfg)
		if err == nil {
			if waiting {
				log.Info("the previous daemon of this datastore released its journal", "waited", time.Since(start).Round(time.Millisecond))
			}
			return r, nil
		}
		if !errors.Is(err, journal.ErrBusy) || mounted() || time.Since(start) > previousDaemonWait {
			return nil, err
		}
		if !waiting {
			waiting = true
			log.Info("waiting for the previous daemon of this datastore (unmounted, still exiting) to release its journal",
				"journal", cfg.JournalPath, "at_most", previousDaemonWait)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// datastoreMounted reports whether datastore is mounted by a cryptds
// anywhere (true when the mount table cannot be read: then the journal
// lock is taken to mean what it says).
func datastoreMounted(datastore string) bool {
	mounts, err := readMounts()
	if err != nil {
		return true
	}
	for _, m := range mounts {
		if m.Source == fsName(datastore) && strings.HasPrefix(m.FSType, "fuse") {
			return true
		}
	}
	return false
}
