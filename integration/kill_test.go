//go:build integration

package integration

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cryptds/cryptds/journal"
	"golang.org/x/sys/unix"
)

// The kill tests run a loop of file operations on their own goroutine and
// kill the daemon with SIGKILL while it runs, so the kill lands inside
// whatever the daemon is doing: an encryption, a pwrite of a block
// rewrite, the two steps of a truncate. A process kill keeps the backing
// store's page cache, so after a remount everything an operation that
// returned success did must read back, not only what was fsync'd; the one
// operation in flight may have happened, in part (whole blocks), or not at
// all. And no block may fail authentication.

// fileOp is one step of a kill test's loop.
type fileOp struct {
	kind string // "write", "truncate" or "fsync"
	off  int    // write
	data []byte // write
	size int    // truncate
}

func (o *fileOp) do(f *os.File) error {
	switch o.kind {
	case "write":
		_, err := f.WriteAt(o.data, int64(o.off))
		return err
	case "truncate":
		return f.Truncate(int64(o.size))
	default:
		return f.Sync()
	}
}

// applyTo returns the file content after o, given the content before.
func (o *fileOp) applyTo(model []byte) []byte {
	switch o.kind {
	case "write":
		if end := o.off + len(o.data); end > len(model) {
			model = append(model, make([]byte, end-len(model))...)
		}
		copy(model[o.off:], o.data)
	case "truncate":
		if o.size < len(model) {
			return model[:o.size]
		}
		return append(model, make([]byte, o.size-len(model))...)
	}
	return model
}

// killDuringLoop runs next(0), next(1), ... on f until the daemon, killed
// after killAfter, makes an operation fail. It returns the content every
// completed operation leaves and the operation that was in flight.
func killDuringLoop(t *testing.T, m *mountProc, f *os.File, killAfter time.Duration, next func(i int) *fileOp) (model []byte, inflight *fileOp) {
	t.Helper()
	type result struct {
		err  error
		op   *fileOp
		done int
	}
	stopped := make(chan result, 1)
	go func() {
		for i := 0; ; i++ {
			op := next(i)
			if err := op.do(f); err != nil {
				stopped <- result{err, op, i}
				return
			}
			model = op.applyTo(model)
		}
	}()
	select {
	case r := <-stopped:
		t.Fatalf("%s failed before the kill: %v", r.op.kind, r.err)
	case <-time.After(killAfter):
	}
	m.kill()
	r := <-stopped
	if !errors.Is(r.err, syscall.ENOTCONN) && !errors.Is(r.err, syscall.ECONNABORTED) {
		t.Fatalf("%s after the kill: %v, want ENOTCONN or ECONNABORTED", r.op.kind, r.err)
	}
	if r.done < 20 {
		t.Fatalf("only %d operations before the kill", r.done)
	}
	t.Logf("killed after %d operations, in a %s", r.done, r.op.kind)
	return model, r.op
}

// rereadAfterKill closes f, mounts again and reads f's file whole through
// the new mount; a read error (a block that fails authentication, say)
// fails the test with the new daemon's log, which names file and block.
func rereadAfterKill(t *testing.T, m *mountProc, f *os.File, remount func() *mountProc) (*mountProc, []byte) {
	t.Helper()
	f.Close()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(m.mnt, &fs); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of the killed mount: %v, want ENOTCONN", err)
	}
	m = remount() // must detach the dead mount itself, as a restart would
	said := func() bool { return strings.Contains(m.stderr.String(), "detached the dead mount") }
	if !waitFor(5*time.Second, said) { // the log reaches us through a pipe copier
		t.Errorf("the new daemon did not say it detached the dead mount:\n%s", m.stderr.String())
	}
	// startMount saw the dead mount as a mount point: wait for the new one
	// (else the read below can hit the bare directory in between).
	mounted := func() bool { return strings.Contains(m.stderr.String(), "msg=mounted") }
	if !waitFor(30*time.Second, mounted) {
		t.Fatalf("the new daemon did not mount:\n%s", m.stderr.String())
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatalf("read after crash: %v\nthe new daemon's log:\n%s", err, m.stderr.String())
	}
	log := m.stderr.String()
	if strings.Contains(log, "failed authentication") {
		t.Errorf("the mount logged an authentication failure:\n%s", log)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "left in flight") {
			t.Log(l)
		}
	}
	return m, got
}

// checkAfterKill compares the file read after the kill with model, the
// content every completed operation left; inflight, the operation the
// kill interrupted, may have changed each of its blocks or not. A
// truncate that shrinks is recorded and happens whole or not at all; one
// that grows a file whose last block is partial first re-encrypts that
// block as a longer one, so a kill between that and the extension leaves
// the file grown with zeros to the block's end (docs/FORMAT.md §7.1).
func checkAfterKill(t *testing.T, got, model []byte, inflight *fileOp) {
	t.Helper()
	if inflight.kind == "truncate" {
		after := inflight.applyTo(append([]byte(nil), model...))
		grown := inflight.size > len(model) && len(got) >= len(model) && len(got) <= inflight.size &&
			string(got) == string(after[:len(got)])
		if string(got) != string(model) && string(got) != string(after) && !grown {
			t.Fatalf("after a kill in a truncate to %d: %d bytes, matching neither the %d bytes before nor the content after it", inflight.size, len(got), len(model))
		}
		return
	}
	lo, hi := len(model), len(model)
	if inflight.kind == "write" {
		hi = max(hi, inflight.off+len(inflight.data))
	}
	if len(got) < lo || len(got) > hi {
		t.Fatalf("file is %d bytes after the kill, want %d..%d", len(got), lo, hi)
	}
	for i, b := range got {
		var old byte
		if i < len(model) {
			old = model[i]
		}
		if b == old {
			continue
		}
		if j := i - inflight.off; inflight.kind == "write" && j >= 0 && j < len(inflight.data) && b == inflight.data[j] {
			continue
		}
		t.Fatalf("byte %d: got %#x, want %#x (file %d bytes, in flight: %s)", i, b, old, len(got), inflight.kind)
	}
}

// TestKillDuringWrite kills the daemon during a loop of writes of up to
// 64 KiB at random offsets of a disk image, with an fsync now and then.
func TestKillDuringWrite(t *testing.T) {
	requireRoot(t)
	for seed := range uint64(3) {
		t.Run(string(rune('a'+seed)), func(t *testing.T) {
			m, vm, remount := devMountWithVM(t)
			f, err := os.OpenFile(filepath.Join(vm, "disk.raw"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(seed, 42))
			killAfter := time.Duration(300+rng.IntN(700)) * time.Millisecond
			model, inflight := killDuringLoop(t, m, f, killAfter, func(i int) *fileOp {
				if i%4 == 3 {
					return &fileOp{kind: "fsync"}
				}
				return &fileOp{kind: "write", off: rng.IntN(8<<20 - 70000), data: seededBytes(rng, 1+rng.IntN(65536))}
			})
			m, got := rereadAfterKill(t, m, f, remount)
			checkAfterKill(t, got, model, inflight)
			m.stop()
		})
	}
}

// TestKillDuringTruncate kills the daemon during a loop of small writes
// and truncates that end inside a block (each a block rewrite and a cut,
// recorded first: docs/FORMAT.md §7.1), with an fsync now and then. fs's
// TestTruncateIntoBlockCrash builds each crash state of one truncate on
// purpose; this checks the real binary end to end.
func TestKillDuringTruncate(t *testing.T) {
	requireRoot(t)
	for seed := range uint64(3) {
		t.Run(string(rune('a'+seed)), func(t *testing.T) {
			m, vm, remount := devMountWithVM(t)
			f, err := os.OpenFile(filepath.Join(vm, "nvram.bin"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(seed, 7))
			const maxSize = 256 << 10
			killAfter := time.Duration(300+rng.IntN(700)) * time.Millisecond
			model, inflight := killDuringLoop(t, m, f, killAfter, func(i int) *fileOp {
				switch {
				case i%5 == 4:
					return &fileOp{kind: "fsync"}
				case rng.IntN(2) == 0:
					size := rng.IntN(maxSize)
					if size%4096 == 0 {
						size++ // into a block: the recorded path
					}
					return &fileOp{kind: "truncate", size: size}
				default:
					return &fileOp{kind: "write", off: rng.IntN(maxSize - 8192), data: seededBytes(rng, 1+rng.IntN(8192))}
				}
			})
			m, got := rereadAfterKill(t, m, f, remount)
			checkAfterKill(t, got, model, inflight)
			m.stop()
		})
	}
}

// TestKillDuringDirectWrites kills the daemon while four writers issue
// O_DIRECT writes to one disk image, as QEMU's cache=none does: whole
// blocks at block-aligned offsets, from 4 KiB to 1 MiB, half of them at
// 512 KiB boundaries, where the daemon stores them with O_DIRECT writes
// of its own (unjournaled: a submitted direct write is not cut by a kill)
// and the rest through the journal. Each writer owns its own region, so
// every completed write must read back and each writer's write in flight
// may have happened per block or not at all.
func TestKillDuringDirectWrites(t *testing.T) {
	requireRoot(t)
	const writers, region = 4, 8 << 20
	for seed := range uint64(3) {
		t.Run(string(rune('a'+seed)), func(t *testing.T) {
			m, vm, remount := devMountWithVM(t)
			path := filepath.Join(vm, "disk.raw")
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(writers * region); err != nil {
				t.Fatal(err)
			}
			model := make([]byte, writers*region)
			inflight := make([]*fileOp, writers)
			errs := make([]error, writers)
			counts := make([]int, writers)
			var wg sync.WaitGroup
			for w := range writers {
				df, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer df.Close()
				rng := rand.New(rand.NewPCG(seed, uint64(w)))
				base := w * region
				wg.Go(func() {
					for i := 0; ; i++ {
						var op *fileOp
						if i%2 == 0 {
							n := (1 + rng.IntN(2)) << 19 // 512 KiB or 1 MiB at a 512 KiB boundary
							op = &fileOp{kind: "write", off: base + rng.IntN((region-n)>>19+1)<<19, data: seededBytes(rng, n)}
						} else {
							n := (1 + rng.IntN(64)) << 12
							op = &fileOp{kind: "write", off: base + rng.IntN((region-n)>>12+1)<<12, data: seededBytes(rng, n)}
						}
						if err := op.do(df); err != nil {
							inflight[w], errs[w], counts[w] = op, err, i
							return
						}
						copy(model[op.off:], op.data)
					}
				})
			}
			rng := rand.New(rand.NewPCG(seed, 99))
			time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
			m.kill()
			wg.Wait()
			for w, err := range errs {
				if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
					t.Fatalf("writer %d: %v, want ENOTCONN or ECONNABORTED", w, err)
				}
				if counts[w] < 10 {
					t.Fatalf("writer %d did only %d writes before the kill", w, counts[w])
				}
			}
			t.Logf("killed after %v writes per writer", counts)
			m, got := rereadAfterKill(t, m, f, remount)
			if len(got) != len(model) {
				t.Fatalf("file is %d bytes after the kill, want %d", len(got), len(model))
			}
			for w := range writers {
				lo, hi := w*region, (w+1)*region
				op := inflight[w]
				op.off -= lo
				checkAfterKill(t, got[lo:hi], model[lo:hi], op)
			}
			m.stop()
		})
	}
}

// TestFsckReportsPendingWrites: fsck run between a kill and the remount
// says that the write journal holds writes the next mount will finish
// (the blocks they cover may fail authentication until then), as a
// warning; the next mount settles the journal and fsck stops saying it.
func TestFsckReportsPendingWrites(t *testing.T) {
	requireRoot(t)
	backing, mnt, state := dirs(t)
	startMount(t, backing, mnt, "--dev", "--state-dir", state).stop()
	id, err := unix.Getxattr(backing, "user.cryptds.datastore", nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, id)
	if _, err := unix.Getxattr(backing, "user.cryptds.datastore", buf); err != nil {
		t.Fatal(err)
	}
	// A killed daemon's journal: one entry taken and never ended, for a
	// file that no longer exists.
	path := filepath.Join(state, "journal", string(buf))
	j, _, err := journal.Open(path, 4, 8192)
	if err != nil {
		t.Fatal(err)
	}
	j.Reset()
	if _, err := j.Begin([]byte("a file handle of a file long gone"), 4096, []byte("stored block")); err != nil {
		t.Fatal(err)
	}
	j.Close()

	fsck := []string{"fsck", "--no-keys", "--state-dir", state, backing}
	out, code := runCode(time.Minute, "", nil, binary, fsck...)
	if code != 0 || !strings.Contains(out, "writes-pending") || !strings.Contains(out, "1 block writes a killed daemon left in flight") {
		t.Fatalf("fsck with a pending journal: exit %d, want 0 and a writes-pending warning\n%s", code, out)
	}
	m := startMount(t, backing, mnt, "--dev", "--state-dir", state)
	if !waitFor(5*time.Second, func() bool { return strings.Contains(m.stderr.String(), "cannot finish a write") }) {
		t.Errorf("the mount did not report the entry it could not finish:\n%s", m.stderr.String())
	}
	m.stop()
	if out, code := runCode(time.Minute, "", nil, binary, fsck...); code != 0 || strings.Contains(out, "writes-pending") {
		t.Fatalf("fsck after the mount settled the journal: exit %d\n%s", code, out)
	}
}
