//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// qemuImgTag is the multi-byte plaintext written into the images through
// a raw source file and qemu-img convert, so the backing store can be
// searched for it.
const qemuImgTag = "CRYPTDS-QEMU-IMG-PATTERN-"

// qemuIOPatterns are the byte patterns qemu-io writes (write -P).
var qemuIOPatterns = []byte{0x5a, 0xa5, 0x3c, 0x77, 0x11}

// qemuImages are the images the sequence leaves behind, with their format.
var qemuImages = []struct{ name, format string }{
	{"base.qcow2", "qcow2"},
	{"blank.raw", "raw"},
	{"conv.qcow2", "qcow2"},
	{"conv.raw", "raw"},
	{"overlay.qcow2", "qcow2"},
}

// mapEntry is one extent of `qemu-img map --output=json`.
type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

func qemuMap(t *testing.T, img, format string) []mapEntry {
	t.Helper()
	out := run(t, "qemu-img", "map", "--output=json", "-f", format, img)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", img, err, out)
	}
	return m
}

// requireMapAt checks that the extent covering off has data == wantData.
func requireMapAt(t *testing.T, img string, m []mapEntry, off int64, wantData bool) {
	t.Helper()
	for _, e := range m {
		if off >= e.Start && off < e.Start+e.Length {
			if e.Data != wantData {
				t.Errorf("qemu-img map %s: offset %d is in %+v, want data=%v\nmap: %+v", img, off, e, wantData, m)
			}
			return
		}
	}
	t.Errorf("qemu-img map %s: no extent covers offset %d: %+v", img, off, m)
}

// qemuIO runs qemu-io commands on img and fails on an error or a pattern
// mismatch (qemu-io reports those on stdout and may still exit 0).
func qemuIO(t *testing.T, format, img string, cmds ...string) string {
	t.Helper()
	return qemuIOWith(t, nil, format, img, cmds...)
}

// qemuIOWith is qemuIO with extra qemu-io options (cache mode, AIO engine).
func qemuIOWith(t *testing.T, opts []string, format, img string, cmds ...string) string {
	t.Helper()
	args := append([]string{"-f", format}, opts...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, code := runCode(2*time.Minute, "", nil, "qemu-io", append(args, img)...)
	if code != 0 || strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io %v %s: exit %d\n%s", cmds, img, code, out)
	}
	return out
}

// qemuImgSequence runs the hypervisor's image operations in dir d; src is a
// 32 MiB sparse raw file with qemuImgTag at 0, 8 MiB and 20 MiB.
func qemuImgSequence(t *testing.T, d, src, scratch string) {
	t.Helper()
	p := func(n string) string { return filepath.Join(d, n) }
	const mi = 1 << 20

	run(t, "qemu-img", "create", "-f", "qcow2", p("base.qcow2"), "64M")
	run(t, "qemu-img", "create", "-f", "raw", p("blank.raw"), "64M")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, p("conv.qcow2"))
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "-t", "none", src, p("conv.raw"))
	qemuIO(t, "qcow2", p("base.qcow2"), "write -P 0x5a 0 2M", "write -P 0xa5 16M 1M")
	qemuIO(t, "raw", p("blank.raw"), "write -P 0x3c 1M 1M")

	// Internal snapshots: take, diverge, list, apply, verify the old data.
	run(t, "qemu-img", "snapshot", "-c", "snap1", p("base.qcow2"))
	qemuIO(t, "qcow2", p("base.qcow2"), "write -P 0x77 0 1M")
	if l := run(t, "qemu-img", "snapshot", "-l", p("base.qcow2")); !strings.Contains(l, "snap1") {
		t.Fatalf("qemu-img snapshot -l does not list snap1:\n%s", l)
	}
	run(t, "qemu-img", "snapshot", "-a", "snap1", p("base.qcow2"))
	qemuIO(t, "qcow2", p("base.qcow2"), "read -P 0x5a 0 2M", "read -P 0xa5 16M 1M")

	// Snapshot delta: an overlay on base, written, then rebased (safe mode
	// copies the differences) onto conv.qcow2 without changing its content.
	run(t, "qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p("overlay.qcow2"))
	qemuIO(t, "qcow2", p("overlay.qcow2"), "write -P 0x11 4M 1M", "read -P 0x5a 1M 1M")
	pre := filepath.Join(scratch, "overlay-pre-rebase.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", p("overlay.qcow2"), pre)
	run(t, "qemu-img", "rebase", "-f", "qcow2", "-b", "conv.qcow2", "-F", "qcow2", p("overlay.qcow2"))
	if info := run(t, "qemu-img", "info", p("overlay.qcow2")); !strings.Contains(info, "backing file: conv.qcow2") {
		t.Errorf("overlay after rebase does not name conv.qcow2 as backing file:\n%s", info)
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", p("overlay.qcow2"), pre)
	os.Remove(pre)

	// Resize (conv.qcow2 is now a backing file: grow only).
	run(t, "qemu-img", "resize", "-f", "qcow2", p("conv.qcow2"), "+32M")
	run(t, "qemu-img", "resize", "-f", "raw", p("blank.raw"), "128M")
	for _, c := range []struct {
		name, format string
		size         int64
	}{{"conv.qcow2", "qcow2", 64 * mi}, {"blank.raw", "raw", 128 * mi}} {
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		out := run(t, "qemu-img", "info", "--output=json", "-f", c.format, p(c.name))
		if err := json.Unmarshal([]byte(out), &info); err != nil || info.VirtualSize != c.size {
			t.Errorf("%s after resize: virtual-size %d (%v), want %d", c.name, info.VirtualSize, err, c.size)
		}
	}
	if st, err := os.Stat(p("blank.raw")); err != nil || st.Size() != 128*mi {
		t.Errorf("blank.raw on the mount after resize: %v, %v; want 128 MiB", st, err)
	}

	for _, img := range qemuImages {
		if img.format == "qcow2" {
			if out := run(t, "qemu-img", "check", "-f", "qcow2", p(img.name)); !strings.Contains(out, "No errors were found") {
				t.Errorf("qemu-img check %s:\n%s", img.name, out)
			}
		}
	}

	// Holes are visible through the mount (SEEK_DATA/SEEK_HOLE).
	m := qemuMap(t, p("conv.raw"), "raw")
	for _, off := range []int64{0, 8 * mi, 20 * mi} {
		requireMapAt(t, p("conv.raw"), m, off, true)
	}
	for _, off := range []int64{4 * mi, 14 * mi, 30 * mi} {
		requireMapAt(t, p("conv.raw"), m, off, false)
	}
	m = qemuMap(t, p("blank.raw"), "raw")
	// QEMU writes the first block of a new raw image (alignment probing).
	requireMapAt(t, p("blank.raw"), m, 512<<10, false)
	requireMapAt(t, p("blank.raw"), m, 1*mi, true)
	requireMapAt(t, p("blank.raw"), m, 100*mi, false)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", p("conv.raw"), src)
}

// TestQemuImg runs qemu-img and qemu-io through an encrypted VM dir and a
// plain dir of the same mount, compares the results pairwise and checks
// the encrypted backing files carry headers and no plaintext.
func TestQemuImg(t *testing.T) {
	require(t, haveCmd("qemu-img") && haveCmd("qemu-io"), "qemu-img and qemu-io (qemu-utils)")
	backing, mnt, _ := kmsMount(t)
	scratch := t.TempDir()
	// A sparse raw source: three 1 MiB runs of the tag, holes elsewhere.
	src := filepath.Join(scratch, "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	chunk := pattern(qemuImgTag, 1<<20)
	for _, off := range []int64{0, 8 << 20, 20 << 20} {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(32 << 20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	vmDirs := map[bool]string{true: mkVMDir(t, mnt, "vm-enc", true), false: mkVMDir(t, mnt, "vm-plain", false)}
	for _, enc := range []bool{true, false} {
		start := time.Now()
		qemuImgSequence(t, vmDirs[enc], src, scratch)
		t.Logf("qemu-img sequence (encrypted=%v): %v", enc, time.Since(start).Round(time.Millisecond))
		if t.Failed() {
			t.FailNow()
		}
	}
	for _, img := range qemuImages {
		a, b := filepath.Join(vmDirs[true], img.name), filepath.Join(vmDirs[false], img.name)
		if out, code := runCode(time.Minute, "", nil, "qemu-img", "compare", "-f", img.format, "-F", img.format, a, b); code != 0 {
			t.Errorf("qemu-img compare %s encrypted vs plain: exit %d\n%s", img.name, code, out)
		}
	}

	needles := [][]byte{[]byte(qemuImgTag)}
	for _, b := range qemuIOPatterns {
		needles = append(needles, bytes.Repeat([]byte{b}, 512))
	}
	encBack := filepath.Join(backing, "vm-enc")
	requireEncryptedBacking(t, encBack, needles...)
	requirePlainBacking(t, filepath.Join(backing, "vm-plain"), []byte(qemuImgTag))
	for _, img := range qemuImages {
		if out, code := runCode(time.Minute, "", nil, binary, "inspect", filepath.Join(encBack, img.name)); code != 0 {
			t.Errorf("cryptds inspect %s: exit %d\n%s", img.name, code, out)
		}
	}
	// The 3 MiB of data in the 32 MiB sparse raw image stay sparse.
	if a := allocatedBytes(t, filepath.Join(encBack, "conv.raw")); a > 8<<20 {
		t.Errorf("backing conv.raw: %d bytes allocated for 3 MiB of data: holes not kept", a)
	}
}

// TestQemuAIOEngines drives images in an encrypted VM dir with
// cache=none through each of QEMU's AIO engines: threads (QEMU's
// default), native (Linux AIO, what libvirt's io='native' selects) and
// io_uring. Each submits O_DIRECT requests to the mount its own way;
// every pattern must read back, zeroes and discards must read as zeroes,
// and none of the patterns may reach the backing store.
func TestQemuAIOEngines(t *testing.T) {
	require(t, haveCmd("qemu-img") && haveCmd("qemu-io"), "qemu-img and qemu-io (qemu-utils)")
	backing, mnt, _ := kmsMount(t)
	vm := mkVMDir(t, mnt, "vm-aio", true)
	for _, engine := range []string{"threads", "native", "io_uring"} {
		for _, format := range []string{"raw", "qcow2"} {
			t.Run(engine+"/"+format, func(t *testing.T) {
				img := filepath.Join(vm, engine+"."+format)
				run(t, "qemu-img", "create", "-f", format, img, "64M")
				opts := []string{"-t", "none", "-i", engine}
				qemuIOWith(t, opts, format, img,
					"write -P 0x5a 0 2M",
					"aio_write -P 0xa5 4M 1M", "aio_write -P 0x3c 6M 64k", "aio_flush",
					"write -P 0x77 1536 3584", // inside one cluster, not 4 KiB aligned
					"write -z 8M 1M", "discard 1M 512k", "flush")
				qemuIOWith(t, opts, format, img,
					"read -P 0x5a 0 1536", "read -P 0x77 1536 3584", "read -P 0x5a 5120 1043456",
					"read -P 0 1M 512k", "read -P 0x5a 1572864 512k",
					"read -P 0xa5 4M 1M", "read -P 0x3c 6M 64k", "read -P 0 8M 1M")
			})
		}
	}
	var needles [][]byte
	for _, b := range []byte{0x5a, 0xa5, 0x3c, 0x77} {
		needles = append(needles, bytes.Repeat([]byte{b}, 512))
	}
	requireEncryptedBacking(t, filepath.Join(backing, "vm-aio"), needles...)
}

// ofdLocked reports whether /proc/locks lists an OFD lock on path's inode.
func ofdLocked(t *testing.T, path string) bool {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[1] == "OFDLCK" && f[5] == id {
			return true
		}
	}
	return false
}

// TestQemuImageLock checks QEMU's image locking through the mount: while a
// paused QEMU or a qemu-io holds an image in an encrypted VM dir, a second
// opener is refused, -U (force share) works, and after the holder exits
// the image opens again.
func TestQemuImageLock(t *testing.T) {
	require(t, haveCmd("qemu-img") && haveCmd("qemu-io"), "qemu-img and qemu-io (qemu-utils)")
	require(t, haveCmd("qemu-system-x86_64"), "qemu-system-x86_64 (qemu-system-x86)")
	_, mnt, _ := kmsMount(t)
	vm := mkVMDir(t, mnt, "vm-lock", true)
	img := filepath.Join(vm, "disk.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", img, "64M")

	tests := []struct {
		name  string
		start func(t *testing.T) (stop func())
	}{
		{"paused qemu-system", func(t *testing.T) func() {
			sock := qmpSocketPath(t)
			q := startQemu(t, "qemu-system-x86_64", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
				"-m", "64", "-qmp", "unix:"+sock+",server=on,wait=off",
				"-drive", "file="+img+",format=qcow2,if=virtio")
			m := dialQMP(t, q, sock)
			if s := m.status(t); s != "prelaunch" && s != "paused" {
				t.Errorf("QEMU -S status %q, want prelaunch/paused", s)
			}
			return func() { m.quit(t, q) }
		}},
		{"qemu-io", func(t *testing.T) func() {
			q := startQemu(t, "qemu-io", "-f", "qcow2", "-c", "sleep 120000", img)
			// Probing with qemu-img info would itself lock qemu-io out:
			// wait for its OFD locks to show up in /proc/locks instead.
			deadline := time.Now().Add(15 * time.Second)
			for !ofdLocked(t, img) {
				if q.exited() || time.Now().After(deadline) {
					t.Fatalf("qemu-io never took the lock\n%s", q.out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			return func() { _ = q.cmd.Process.Kill(); <-q.done }
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stop := tc.start(t)
			out, code := runCode(time.Minute, "", nil, "qemu-img", "info", img)
			if code == 0 || !strings.Contains(out, `Failed to get shared "write" lock`) {
				t.Errorf("qemu-img info while held: exit %d, want the shared write lock refusal:\n%s", code, out)
			}
			if out, code := runCode(time.Minute, "", nil, "qemu-img", "info", "-U", img); code != 0 {
				t.Errorf("qemu-img info -U while held: exit %d\n%s", code, out)
			}
			out, code = runCode(time.Minute, "", nil, "qemu-io", "-f", "qcow2", "-c", "write 0 4k", img)
			if code == 0 || !strings.Contains(out, `Failed to get "write" lock`) {
				t.Errorf("second writer (qemu-io write) while held: exit %d, want the write lock refusal:\n%s", code, out)
			}
			stop()
			if out, code := runCode(time.Minute, "", nil, "qemu-img", "info", img); code != 0 {
				t.Errorf("qemu-img info after the holder exited: exit %d\n%s", code, out)
			}
		})
	}
	if out := run(t, "qemu-img", "check", img); !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check after the lock tests:\n%s", out)
	}
}
