package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// forbidCoreDumps keeps the daemon's memory, which holds unwrapped keys
// and the plaintext of every VM it serves, out of core files: a crash or a
// stray SIGABRT with systemd-coredump would otherwise write both to the
// host's disk. Not dumpable also means no ptrace by anyone but root.
// Swap is the host's to configure (docs/THREAT-MODEL.md).
func forbidCoreDumps(log *slog.Logger) {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		log.Warn("cannot disable core dumps (RLIMIT_CORE)", "err", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("cannot mark the daemon not dumpable", "err", err)
	}
}
