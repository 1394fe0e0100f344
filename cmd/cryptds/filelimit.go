package main

import (
	"log/slog"
	"os"
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
	if lim.Cur < lowFileLimit {
		log.Warn("the open-file limit is low: the daemon keeps a descriptor per file the kernel caches and makes the kernel forget files past half the limit, so walks of many files cost extra lookups (raise the hard limit, e.g. systemd's LimitNOFILE)", "limit", lim.Cur)
	} else {
		log.Debug("open-file limit", "limit", lim.Cur)
	}
	return lim.Cur
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
