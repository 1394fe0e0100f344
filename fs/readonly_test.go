package fs

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadOnlyMount mounts a second, read-only view of a datastore served
// read-write (a backup host, forensics): it reads encrypted and plain
// files, refuses every change with EROFS, creates no key, and still
// refuses after `mount -o remount,rw`, which the daemon is not told about.
func TestReadOnlyMount(t *testing.T) {
	rw := newVMAndPlainFS(t)
	content := map[string][]byte{}
	for _, rel := range vmAndPlain {
		content[rel] = randBytes(3*4096 + 17)
		mustWrite(t, rw.m(rel), content[rel])
	}
	ro := newTestFS(t, testOpts{back: rw.back, keys: rw.keys, journal: "-", readOnly: true})
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == ro.mnt && !strings.HasPrefix(f[5], "ro") {
			t.Errorf("mount options %q, want ro", f[5])
		}
	}
	kek := rw.keys.created()
	check := func(t *testing.T) {
		for _, rel := range vmAndPlain {
			if got := mustRead(t, ro.m(rel)); string(got) != string(content[rel]) {
				t.Errorf("%s: read %d bytes, not what was written", rel, len(got))
			}
		}
		changes := []struct {
			name string
			do   func() error
		}{
			{"open for writing", func() error { return openClose(ro.m("vm/disk"), unix.O_WRONLY) }},
			{"O_TRUNC", func() error { return openClose(ro.m("plain/disk"), unix.O_RDONLY|unix.O_TRUNC) }},
			{"create", func() error { return openClose(ro.m("vm/new"), unix.O_CREAT|unix.O_WRONLY) }},
			{"O_TMPFILE", func() error { return openClose(ro.m("vm"), unix.O_TMPFILE|unix.O_RDWR) }},
			{"mkdir", func() error { return os.Mkdir(ro.m("vm/d"), 0o755) }},
			{"mknod", func() error { return unix.Mknod(ro.m("plain/fifo"), unix.S_IFIFO|0o600, 0) }},
			{"symlink", func() error { return os.Symlink("disk", ro.m("plain/s")) }},
			{"link", func() error { return os.Link(ro.m("plain/disk"), ro.m("plain/h")) }},
			{"unlink", func() error { return os.Remove(ro.m("plain/disk")) }},
			{"rename", func() error { return os.Rename(ro.m("vm/disk"), ro.m("vm/disk2")) }},
			{"truncate", func() error { return os.Truncate(ro.m("vm/disk"), 0) }},
			{"chmod", func() error { return os.Chmod(ro.m("vm/disk"), 0o600) }},
			{"setxattr", func() error { return unix.Setxattr(ro.m("plain/disk"), "user.x", []byte("1"), 0) }},
			{"new policy", func() error { return unix.Setxattr(ro.m("plain"), xattrPolicy, []byte("encrypted"), 0) }},
			{"rekey", func() error { return unix.Setxattr(ro.m("vm"), xattrPolicy, []byte("rekey"), 0) }},
		}
		for _, c := range changes {
			if err := c.do(); !errors.Is(err, syscall.EROFS) {
				t.Errorf("%s: %v, want EROFS", c.name, err)
			}
		}
		if n := rw.keys.created(); n != kek {
			t.Errorf("the read-only mount created %d keys", n-kek)
		}
	}
	t.Run("ro", check)
	if err := unix.Mount("", ro.mnt, "", unix.MS_REMOUNT, ""); err != nil {
		t.Logf("remount rw refused by the kernel: %v", err)
		return
	}
	t.Run("after remount rw", check)
}

// created is how many keys k has made.
func (k *fakeKeys) created() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}
