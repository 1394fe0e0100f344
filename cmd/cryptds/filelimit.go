package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lowFileLimit is the open-file limit under which the daemon warns: every
// inode the kernel holds keeps an O_PATH descriptor in the daemon
// (fs/pathfd.go), and past half the limit the daemon makes the kernel
// forget the oldest ones (fs/pathlimit.go), which costs lookups again.
const lowFileLimit = 1 << 16

// raiseOpenFileLimit lifts RLIMIT_NOFILE to the kernel's ceiling
// (fs.nr_open) when allowed (root with CAP_SYS_RESOURCE): `ls -l` over
// 40,000 files of a datastore once exhausted a shell's 20,000-descriptor
// limit. Go raises only the soft limit, to the hard one. It returns the
// limit now in force.
func raiseOpenFileLimit(log *slog.Logger) uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-file limit", "err", err)
		return 0
	}
	if ceiling := nrOpen(); lim.Max < ceiling {
		want := unix.Rlimit{Cur: ceiling, Max: ceiling}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err == nil {
			lim = want
		}
	}
	if lim.Cur < lim.Max {
		raised := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			lim = raised
		}
	}
	log.Debug("open-file limit", "limit", lim.Cur)
	return lim.Cur
}

// warnLowFileLimit warns when the open-file limit will cost this datastore
// extra lookups: the limit is under lowFileLimit and the datastore already
// holds more entries than half of it, the point past which a walk of all
// of them (ls -lR, a backup) makes the daemon ask the kernel to forget
// files. A small datastore under a low limit loses nothing, so it gets no
// warning on every mount. The count stops at half the limit.
func warnLowFileLimit(log *slog.Logger, limit uint64, datastore string) {
	if limit >= lowFileLimit {
		return
	}
	half := limit / 2
	var n uint64
	errEnough := errors.New("enough")
	_ = filepath.WalkDir(datastore, func(_ string, _ fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if n++; n > half {
			return errEnough
		}
		return nil
	})
	if n <= half {
		return
	}
	log.Warn("the open-file limit is low for this datastore: it holds more than half as many files as the limit, and past half the limit the daemon makes the kernel forget files, so walks of all of them cost extra lookups (raise the hard limit, e.g. systemd's LimitNOFILE)",
		"limit", limit, "files_at_least", n)
}

// nrOpen is the most descriptors a process may be allowed (fs.nr_open),
// 1048576 by default on Linux.
func nrOpen() uint64 {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 1 << 20
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 1 << 20
	}
	return n
}
