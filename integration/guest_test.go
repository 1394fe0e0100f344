//go:build integration

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guestSeed is what /init writes to the first 4 MiB of /dev/vda: `yes SEED`.
func guestSeed(seed string) []byte { return pattern(seed+"\n", 4<<20) }

// bootGuest boots the test guest once with disk and waits for it to power
// off; it returns the serial log (written to serial, a file on the mount).
func bootGuest(t *testing.T, kernel, initrd, drive, serial, appendArgs string) string {
	t.Helper()
	start := time.Now()
	q := startQemu(t, "qemu-system-x86_64", guestArgs(kernel, initrd, drive, serial, appendArgs, 128)...)
	err := q.wait(t, 3*time.Minute)
	log, rerr := os.ReadFile(serial)
	if err != nil || rerr != nil {
		t.Fatalf("qemu (%s): %v; serial log %s: %v\nqemu output:\n%s\nserial log:\n%s", appendArgs, err, serial, rerr, q.out.String(), log)
	}
	t.Logf("boot %q: %v", appendArgs, time.Since(start).Round(100*time.Millisecond))
	return string(log)
}

func requireResult(t *testing.T, log, want string) {
	t.Helper()
	for _, l := range strings.Split(log, "\n") {
		if i := strings.Index(l, "T-RESULT: "); i >= 0 {
			if !strings.HasPrefix(l[i+len("T-RESULT: "):], want) {
				t.Errorf("guest said %q, want T-RESULT: %s", strings.TrimSpace(l[i:]), want)
			}
			return
		}
	}
	t.Errorf("no T-RESULT line in the serial log (want %s):\n%s", want, log)
}

// headSum is the sha256 of the first n bytes of path.
func headSum(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return [32]byte(h.Sum(nil))
}

// TestGuestBoot boots a real Linux guest whose disk lives in an encrypted VM
// dir on the mount, with cache=none (O_DIRECT) and cache=writeback: the
// guest writes a seed pattern and powers off, the datastore is remounted,
// a second boot verifies the pattern; the serial log is a file on the
// mount; the backing store holds no trace of either. A blank disk is the
// negative control.
func TestGuestBoot(t *testing.T) {
	kernel, initrd := guestImage(t)

	t.Run("negative control", func(t *testing.T) {
		_, mnt, _ := kmsMount(t)
		vm := mkVMDir(t, mnt, "vm-blank", true)
		disk := filepath.Join(vm, "disk.raw")
		if err := os.Truncate(disk, 0); err == nil || !os.IsNotExist(err) {
			t.Fatalf("disk.raw already exists: %v", err)
		}
		f, err := os.Create(disk)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(64 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		log := bootGuest(t, kernel, initrd, "file="+disk+",format=raw,if=virtio,cache=none",
			filepath.Join(vm, "serial.log"), "t.mode=verify t.seed=CRYPTDS-GUEST-BLANK")
		requireResult(t, log, "FAIL")
	})

	for _, cache := range []string{"none", "writeback"} {
		t.Run("cache="+cache, func(t *testing.T) {
			backing, mnt, m := kmsMount(t)
			name := "vm-" + cache
			seed := "CRYPTDS-GUEST-SEED-" + strings.ToUpper(cache)
			vm := mkVMDir(t, mnt, name, true)
			disk := filepath.Join(vm, "disk.raw")
			f, err := os.Create(disk)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(64 << 20); err != nil {
				t.Fatal(err)
			}
			f.Close()
			drive := "file=" + disk + ",format=raw,if=virtio,cache=" + cache

			log := bootGuest(t, kernel, initrd, drive, filepath.Join(vm, "serial-write.log"), "t.mode=write t.seed="+seed)
			requireResult(t, log, "OK mode=write")
			if got, want := headSum(t, disk, 4<<20), sha256.Sum256(guestSeed(seed)); got != want {
				t.Errorf("host view of the disk after the write boot: sha256 %x, want %x", got, want)
			}

			// Remount: the verify boot reads what came back from the
			// backing store with keys from the KMS.
			m.stop()
			m = remount(t, backing, mnt)
			log = bootGuest(t, kernel, initrd, drive, filepath.Join(vm, "serial-verify.log"), "t.mode=verify t.seed="+seed)
			requireResult(t, log, "OK mode=verify")

			back := filepath.Join(backing, name)
			requireEncryptedBacking(t, back, []byte(seed), []byte("T-RESULT"), []byte("Linux version"))
			if a := allocatedBytes(t, filepath.Join(back, "disk.raw")); a > 16<<20 {
				t.Errorf("backing disk.raw: %d bytes allocated for 4 MiB written by the guest: not sparse", a)
			}
		})
	}
}

// requireODirect checks that QEMU opened path with O_DIRECT (cache=none)
// and that the mount accepted it.
func requireODirect(t *testing.T, q *qemuProc, path string) {
	t.Helper()
	pid := q.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || target != path {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var flags int
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				fmt.Sscanf(strings.TrimSpace(v), "%o", &flags)
			}
		}
		if flags&syscall.O_DIRECT != 0 {
			return
		}
		t.Logf("fd %s on %s: flags %o (no O_DIRECT)", fd.Name(), path, flags)
	}
	t.Errorf("QEMU (cache=none) has no O_DIRECT fd on %s", path)
}

// guestHold starts the guest in hold mode (it ticks on the serial port every
// second) with a qcow2 disk and a QMP socket; extra are appended.
func guestHold(t *testing.T, kernel, initrd, disk, serial string, extra ...string) (*qemuProc, *qmp) {
	t.Helper()
	sock := qmpSocketPath(t)
	args := guestArgs(kernel, initrd, "file="+disk+",format=qcow2,if=virtio,cache=none", serial,
		"t.mode=hold t.seed=CRYPTDS-GUEST-RAM t.fill=16", 256)
	args = append(args, "-qmp", "unix:"+sock+",server=on,wait=off")
	q := startQemu(t, "qemu-system-x86_64", append(args, extra...)...)
	return q, dialQMP(t, q, sock)
}

// TestGuestSuspendResume takes a memory snapshot (savevm) of a running guest
// into a qcow2 in an encrypted VM dir and migrates it to a state file on
// the mount; both restore (loadvm, -incoming) and the guest keeps ticking
// where it was, without a reboot. Guest RAM holds the seed pattern (the
// guest's /pat), so the plaintext state carries it and the backing copies
// must not.
func TestGuestSuspendResume(t *testing.T) {
	backing, mnt, _ := kmsMount(t)
	kernel, initrd := guestImage(t)
	vm := mkVMDir(t, mnt, "vm-susp", true)
	disk := filepath.Join(vm, "disk.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", disk, "64M")
	const seed = "CRYPTDS-GUEST-RAM"

	hasTickAbove := func(n int) func(string) bool { return func(s string) bool { return lastTick(s) > n } }

	// 1. Boot, wait for ticks, savevm, then migrate to a file on the mount.
	serial := filepath.Join(vm, "serial.log")
	q, m := guestHold(t, kernel, initrd, disk, serial)
	waitSerial(t, q, serial, 2*time.Minute, "T-TICK 2", hasTickAbove(1))
	requireODirect(t, q, disk)
	start := time.Now()
	if out := m.hmp(t, "savevm s1"); strings.TrimSpace(out) != "" {
		t.Fatalf("savevm s1: %q", out)
	}
	t.Logf("savevm: %v", time.Since(start).Round(10*time.Millisecond))
	savedAt := lastTick(waitSerial(t, q, serial, 30*time.Second, "a tick after savevm", func(string) bool { return true }))

	state := filepath.Join(vm, "state.bin")
	start = time.Now()
	m.must(t, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(10_000_000_000)})
	m.must(t, "migrate", map[string]any{"uri": "exec:cat > " + state})
	var mig struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
		TotalTime int64  `json:"total-time"`
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if err := json.Unmarshal(m.must(t, "query-migrate", nil), &mig); err != nil {
			t.Fatal(err)
		}
		if mig.Status == "completed" || mig.Status == "failed" || mig.Status == "cancelled" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %q after 2 minutes", mig.Status)
		}
	}
	if mig.Status != "completed" {
		t.Fatalf("migrate to %s: %s %s", state, mig.Status, mig.ErrorDesc)
	}
	if s := m.status(t); s != "postmigrate" {
		t.Errorf("source after migration: %q, want postmigrate", s)
	}
	migratedAt := lastTick(waitSerial(t, q, serial, time.Second, "serial log", func(string) bool { return true }))
	t.Logf("migrate to file: %v (QEMU total-time %d ms), saved at tick %d, migrated at tick %d",
		time.Since(start).Round(10*time.Millisecond), mig.TotalTime, savedAt, migratedAt)
	m.quit(t, q)

	if l := run(t, "qemu-img", "snapshot", "-l", disk); !strings.Contains(l, "s1") {
		t.Fatalf("qemu-img snapshot -l does not list s1:\n%s", l)
	}
	st, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(st, []byte(seed+"\n"+seed+"\n")) {
		t.Errorf("positive control: the migration stream (%d bytes) does not contain the guest's RAM pattern", len(st))
	}
	st = nil

	// 2. Incoming migration from the state file: running, ticks continue.
	t.Run("incoming from file", func(t *testing.T) {
		serial := filepath.Join(vm, "serial-incoming.log")
		start := time.Now()
		q, m := guestHold(t, kernel, initrd, disk, serial, "-incoming", "exec:cat "+state)
		for deadline := time.Now().Add(time.Minute); m.status(t) != "running"; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("destination not running after a minute: %q\n%s", m.status(t), q.out.String())
			}
		}
		t.Logf("incoming: running after %v", time.Since(start).Round(10*time.Millisecond))
		log := waitSerial(t, q, serial, time.Minute, fmt.Sprintf("a tick above %d", migratedAt), hasTickAbove(migratedAt))
		if strings.Contains(log, "T-RESULT") || strings.Contains(log, "T-READY") {
			t.Errorf("the guest rebooted instead of resuming:\n%s", log)
		}
		m.quit(t, q)
	})

	// 3. loadvm: restart from the internal snapshot.
	t.Run("loadvm", func(t *testing.T) {
		serial := filepath.Join(vm, "serial-loadvm.log")
		q, m := guestHold(t, kernel, initrd, disk, serial, "-loadvm", "s1")
		log := waitSerial(t, q, serial, time.Minute, fmt.Sprintf("a tick above %d", savedAt), hasTickAbove(savedAt))
		if strings.Contains(log, "T-RESULT") || strings.Contains(log, "T-READY") {
			t.Errorf("the guest rebooted instead of resuming from s1:\n%s", log)
		}
		if first := tickRE.FindStringSubmatch(log); first != nil && first[1] == "1" {
			t.Errorf("ticks restarted at 1 after loadvm:\n%s", log)
		}
		m.quit(t, q)
	})

	if out := run(t, "qemu-img", "check", disk); !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check after savevm/loadvm:\n%s", out)
	}
	// The vmstate inside the qcow2, the migration stream and the serial
	// logs are all encrypted on the backing store.
	requireEncryptedBacking(t, filepath.Join(backing, "vm-susp"), []byte(seed+"\n"+seed), []byte("T-TICK"))
}
