//go:build integration

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cryptds/cryptds/internal/mountinfo"
)

// TestFsckAndInspectRefuseTheMount: fsck and inspect read backing files.
// Given a path through the mount they saw plaintext and reported a healthy
// datastore CORRUPT (fsck, exit 5) or an encrypted file "not an encrypted
// object" (inspect, exit 6). They must refuse with exit 3 and name the
// backing path to use.
func TestFsckAndInspectRefuseTheMount(t *testing.T) {
	requireRoot(t)
	m, vm, _ := devMountWithVM(t)
	disk := filepath.Join(vm, "disk.raw")
	if err := os.WriteFile(disk, pattern("CRYPTDS-ONMOUNT-", 100<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	backingDisk := filepath.Join(m.backing, "vm", "disk.raw")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"fsck on the mountpoint", []string{"fsck", "--no-keys", m.mnt}, "cryptds fsck on " + m.backing},
		{"fsck on a VM of the mount", []string{"fsck", "--no-keys", vm}, "cryptds fsck on " + filepath.Join(m.backing, "vm")},
		{"inspect through the mount", []string{"inspect", disk}, "cryptds inspect " + backingDisk},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCode(time.Minute, "", nil, binary, tc.args...)
			if code != 3 {
				t.Fatalf("cryptds %v: exit %d, want 3\n%s", tc.args, code, out)
			}
			if !strings.Contains(out, "is on the cryptds mount "+m.mnt) || !strings.Contains(out, tc.want) {
				t.Errorf("cryptds %v does not name the mount and the backing path %q:\n%s", tc.args, tc.want, out)
			}
			if strings.Contains(out, "CORRUPT") || strings.Contains(out, "not an encrypted object") {
				t.Errorf("cryptds %v still judged the plaintext view:\n%s", tc.args, out)
			}
		})
	}
	// The backing path it names is the right one.
	if out, code := runCode(time.Minute, "", nil, binary, "inspect", backingDisk); code != 0 {
		t.Errorf("inspect %s: exit %d\n%s", backingDisk, code, out)
	}
	m.stop()
}

// TestBusyRefusalsNameTheRealHolders: the busy-VM refusal names the
// process writing through the mount, never the mount daemon (which holds
// the backing file for it), and says --force; cryptds umount of a busy
// mount never says "open files:" with an empty list (here a shell's
// working directory keeps it busy).
func TestBusyRefusalsNameTheRealHolders(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	web := filepath.Join(mnt, "web01")
	if err := os.Mkdir(web, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(web, "disk.raw")
	if err := os.WriteFile(disk, pattern("CRYPTDS-BUSY-", 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, code := runCode(time.Minute, "", nil, binary, "vm", "encrypt", web)
	f.Close()
	if code != 3 {
		t.Fatalf("vm encrypt with a writer: exit %d, want 3\n%s", code, out)
	}
	if !strings.Contains(out, fmt.Sprintf("pid %d)", os.Getpid())) {
		t.Errorf("the refusal does not name the writer (this test, pid %d):\n%s", os.Getpid(), out)
	}
	if daemon := fmt.Sprintf("pid %d)", m.cmd.Process.Pid); strings.Contains(out, daemon) {
		t.Errorf("the refusal names the mount daemon (%s) as a writer:\n%s", daemon, out)
	}
	if !strings.Contains(out, "--force") {
		t.Errorf("the refusal does not say --force:\n%s", out)
	}

	sh := exec.Command("sleep", "60")
	sh.Dir = web
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sh.Process.Kill(); _ = sh.Wait() }()
	out, code = runCode(time.Minute, "", nil, binary, "umount", mnt)
	if code != 3 {
		t.Fatalf("umount of a busy mount: exit %d, want 3\n%s", code, out)
	}
	if strings.Contains(out, "open files: \n") || strings.HasSuffix(strings.TrimSpace(out), "open files:") {
		t.Errorf("umount says open files: with an empty list:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("sleep pid %d, its working directory", sh.Process.Pid)) {
		t.Errorf("umount does not name the process whose working directory is in the mount:\n%s", out)
	}
	_ = sh.Process.Kill()
	_ = sh.Wait()
	m.stop()
}

// TestLeftoverMountsAreThisRunsOnly: the harness's leftover check counts
// only mounts under this run's directory; a host's own cryptds datastore
// or another run's mount is not a leftover (make test used to fail on any
// host with a live cryptds mount).
func TestLeftoverMountsAreThisRunsOnly(t *testing.T) {
	run := "/tmp/cryptds-it-run-123"
	table := []mountinfo.Entry{
		{Point: "/", Source: "/dev/sda1", FSType: "ext4"},
		{Point: "/mnt/ds1", Source: "cryptds:/srv/ds1", FSType: "fuse.cryptds"},                                  // the host's datastore
		{Point: "/tmp/cryptds-it-run-456/T/mnt", Source: "cryptds:/tmp/cryptds-it-run-456/T/backing"},            // another run
		{Point: "/tmp/cryptds-it-run-1234/x", Source: "cryptds:/tmp/cryptds-it-run-1234/y"},                      // a name that only starts alike
		{Point: run + "/TestX/001/mnt", Source: "cryptds:" + run + "/TestX/001/backing", FSType: "fuse.cryptds"}, // ours
		{Point: "/mnt/elsewhere", Source: "cryptds:" + run + "/TestY/backing", FSType: "fuse.cryptds"},           // ours, mounted outside
	}
	got := leftoverMounts(table, run)
	want := []string{
		run + "/TestX/001/mnt (cryptds:" + run + "/TestX/001/backing)",
		"/mnt/elsewhere (cryptds:" + run + "/TestY/backing)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("leftovers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
