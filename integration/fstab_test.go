//go:build integration

package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperPath is where util-linux mount(8) looks for the helper of type
// fuse.cryptds: it searches /sbin, /sbin/fs.d and /sbin/fs, not PATH.
const helperPath = "/sbin/mount.fuse.cryptds"

// installHelper links the binary under test as mount(8)'s helper and
// removes the link afterwards. An existing helper (an installed cryptds)
// is left alone and the test skipped outside CI.
func installHelper(t *testing.T) {
	t.Helper()
	if _, err := os.Lstat(helperPath); err == nil {
		require(t, false, helperPath+" does not exist yet (the test installs its own)")
	}
	if err := os.Symlink(binary, helperPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(helperPath) })
}

// daemonOf finds the pid of the cryptds daemon serving mnt.
func daemonOf(t *testing.T, mnt string) int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", "^cryptds mount .* "+mnt+"$").Output()
	var pid int
	fmt.Sscan(string(out), &pid)
	return pid
}

// TestFstabMount mounts through mount(8) -t fuse.cryptds with a config file
// (dev KMS), as an fstab line would, writes through it, and unmounts with
// umount(8); the daemon exits by itself.
func TestFstabMount(t *testing.T) {
	backing, mnt, _, cfg, logf := fstabDatastore(t)

	out, err := exec.Command("mount", "-t", "fuse.cryptds", backing, mnt,
		"-o", "config="+cfg+",allow_other,nodev,_netdev,log="+logf).CombinedOutput()
	if err != nil {
		b, _ := os.ReadFile(logf)
		t.Fatalf("mount -t fuse.cryptds: %v\n%s\ndaemon log:\n%s", err, out, b)
	}
	if !isMounted(mnt) {
		t.Fatal("mount(8) returned but nothing is mounted")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if !strings.Contains(string(mi), mnt+" ") || !strings.Contains(string(mi), "fuse.cryptds cryptds:"+backing) ||
		!strings.Contains(string(mi), "allow_other") {
		t.Errorf("mount table entry not as expected:\n%s", mi)
	}
	pid := daemonOf(t, mnt)
	if pid == 0 {
		t.Fatal("no daemon process found for the mount")
	}
	vm := filepath.Join(mnt, "vm1")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	data := pattern("FSTAB-PATTERN-", 1<<20)
	if err := os.WriteFile(filepath.Join(vm, "disk"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	searchBacking(t, backing, data[:64])

	// A second mount of the same mountpoint fails with the daemon's code.
	if err := exec.Command("mount", "-t", "fuse.cryptds", backing, mnt, "-o", "config="+cfg+",log="+logf).Run(); err == nil {
		t.Error("mounting an already mounted datastore succeeded")
	}

	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	if !waitFor(10*time.Second, func() bool { return daemonOf(t, mnt) == 0 }) {
		t.Errorf("daemon %d still running after umount", pid)
	}
	b, _ := os.ReadFile(logf)
	if !strings.Contains(string(b), "msg=unmounted") {
		t.Errorf("daemon log lacks a clean unmount:\n%s", b)
	}

	// Bad options fail mount(8) before anything starts.
	out, err = exec.Command("mount", "-t", "fuse.cryptds", backing, mnt, "-o", "config="+cfg+",bogus").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bogus") {
		t.Errorf("bogus option: err %v, output %s", err, out)
	}
}

// TestFstabRemountCycles unmounts with umount(8) and mounts again at once
// through mount(8), 50 times, writing a file before each unmount: a mount
// that follows a completed unmount must succeed every time, although the
// previous daemon is still exiting and holds the datastore's journal for
// a few milliseconds more (the new daemon waits for it and says so).
func TestFstabRemountCycles(t *testing.T) {
	backing, mnt, state, cfg, logf := fstabDatastore(t)
	mount := func(i int) {
		t.Helper()
		out, err := exec.Command("mount", "-t", "fuse.cryptds", backing, mnt, "-o", "config="+cfg+",log="+logf).CombinedOutput()
		if err != nil {
			b, _ := os.ReadFile(logf)
			t.Fatalf("cycle %d: mount right after umount: %v\n%s\ndaemon log (last lines):\n%s", i, err, out, tail(string(b), 20))
		}
	}
	mount(0)
	vm := filepath.Join(mnt, "vm1")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	const cycles = 50
	for i := range cycles {
		data := pattern(fmt.Sprintf("CYCLE-%03d-", i), 64<<10+i)
		if err := os.WriteFile(filepath.Join(vm, fmt.Sprintf("f%03d", i)), data, 0o600); err != nil {
			t.Fatalf("cycle %d: write: %v", i, err)
		}
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Fatalf("cycle %d: umount: %v\n%s", i, err, out)
		}
		mount(i + 1)
	}
	// A previous daemon slower to exit than any here: its journal lock is
	// held for half a second after the unmount.
	journals, err := filepath.Glob(filepath.Join(state, "journal", "*"))
	if err != nil || len(journals) != 1 {
		t.Fatalf("journal of the mount: %v %v", journals, err)
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	waitFor(10*time.Second, func() bool { _, err := os.Stat(journals[0]); return os.IsNotExist(err) })
	held, err := os.OpenFile(journals[0], os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		held.Close()
	}()
	mount(cycles + 1)
	if b, _ := os.ReadFile(logf); !strings.Contains(string(b), "waiting for the previous daemon") {
		t.Errorf("the mount after a slow previous daemon does not say it waited:\n%s", tail(string(b), 10))
	}
	for i := range cycles {
		want := pattern(fmt.Sprintf("CYCLE-%03d-", i), 64<<10+i)
		got, err := os.ReadFile(filepath.Join(vm, fmt.Sprintf("f%03d", i)))
		if err != nil || string(got) != string(want) {
			t.Errorf("file of cycle %d after %d remounts: %d bytes, %v", i, cycles, len(got), err)
		}
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(logf)
	t.Logf("%d of %d mounts waited for the previous daemon", strings.Count(string(b), "waiting for the previous daemon"), cycles+1)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// TestFstabReadOnly mounts a datastore read-only through mount(8) with
// -o ro and generic options mount(8) passes on (nodiratime, lazytime):
// files written before read back, every change is EROFS, also after
// mount -o remount,rw, and no write journal is made.
func TestFstabReadOnly(t *testing.T) {
	backing, mnt, state, cfg, logf := fstabDatastore(t)
	mount := func(opts string) {
		t.Helper()
		if out, err := exec.Command("mount", "-t", "fuse.cryptds", backing, mnt, "-o", opts+",config="+cfg+",log="+logf).CombinedOutput(); err != nil {
			b, _ := os.ReadFile(logf)
			t.Fatalf("mount -o %s: %v\n%s\n%s", opts, err, out, tail(string(b), 10))
		}
	}
	mount("rw,nodiratime")
	vm := filepath.Join(mnt, "vm1")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	encryptDir(t, vm)
	data := pattern("READ-ONLY-", 300<<10)
	if err := os.WriteFile(filepath.Join(vm, "disk"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	journals, _ := filepath.Glob(filepath.Join(state, "journal", "*"))
	for _, j := range journals {
		waitFor(10*time.Second, func() bool { _, err := os.Stat(j); return os.IsNotExist(err) })
	}
	mount("ro,nodiratime,lazytime,noatime,nodev,nosuid")
	check := func(when string) {
		got, err := os.ReadFile(filepath.Join(vm, "disk"))
		if err != nil || string(got) != string(data) {
			t.Errorf("%s: read %d bytes, %v", when, len(got), err)
		}
		for name, err := range map[string]error{
			"write":  os.WriteFile(filepath.Join(vm, "disk"), []byte("x"), 0o600),
			"create": os.WriteFile(filepath.Join(vm, "new"), []byte("x"), 0o600),
			"mkdir":  os.Mkdir(filepath.Join(mnt, "d"), 0o755),
			"rekey":  setPolicy(vm, "rekey"),
		} {
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("%s: %s: %v, want EROFS", when, name, err)
			}
		}
	}
	check("ro")
	if out, err := exec.Command("mount", "-o", "remount,rw", mnt).CombinedOutput(); err != nil {
		t.Logf("remount,rw: %v %s", err, out)
	} else {
		check("after remount,rw")
	}
	if js, _ := filepath.Glob(filepath.Join(state, "journal", "*")); len(js) != 0 {
		t.Errorf("a read-only mount made a journal: %v", js)
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
}

// setPolicy sets the policy xattr of dir.
func setPolicy(dir, v string) error {
	return syscall.Setxattr(dir, "user.cryptds.policy", []byte(v), 0)
}

// fstabDatastore prepares a mount through mount(8) and the installed
// helper: a backing directory, a mountpoint (unmounted at the end), a
// state directory, a config file for the dev KMS and the daemon's log
// file.
func fstabDatastore(t *testing.T) (backing, mnt, state, cfg, logf string) {
	t.Helper()
	requireRoot(t)
	require(t, haveCmd("mount") && haveCmd("umount"), "util-linux mount")
	backing, mnt, state = dirs(t)
	installHelper(t)
	cfg = filepath.Join(t.TempDir(), "ds.toml")
	writeFile(t, cfg, fmt.Sprintf("dev = true\nstate-dir = %q\n", state))
	logf = filepath.Join(t.TempDir(), "daemon.log")
	t.Cleanup(func() {
		if isMounted(mnt) {
			exec.Command("umount", mnt).Run()
		}
	})
	return backing, mnt, state, cfg, logf
}
