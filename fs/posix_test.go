package fs

import (
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// posixSkips are posixtest entries that do not apply, with the reason.
var posixSkips = map[string]string{
	// cryptds leaves POSIX/OFD locks to the kernel (no lock ops, as
	// integration.TestQemuImageLock shows is enough for QEMU's image
	// locking on one host). With
	// kernel-local locks, two descriptors of one process share the POSIX
	// lock owner and never conflict, exactly as on ext4; this entry expects
	// a filesystem that forwards locks with per-descriptor owners.
	// TestOFDLockConflict covers what QEMU needs.
	"FcntlFlockLocksFile": "kernel-local POSIX locks: same-process descriptors share the owner (as on ext4); see TestOFDLockConflict",
}

func runPosix(t *testing.T, encrypted bool) {
	names := make([]string, 0, len(posixtest.All))
	for n := range posixtest.All {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkips[name]; ok {
				t.Skip(why)
			}
			tf := newTestFS(t, testOpts{})
			dir := tf.mnt
			if encrypted {
				dir = tf.encDir("vm")
			}
			posixtest.All[name](t, dir)
		})
	}
}

func TestPosixPlain(t *testing.T)     { runPosix(t, false) }
func TestPosixEncrypted(t *testing.T) { runPosix(t, true) }
