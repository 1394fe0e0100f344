package vmctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/objcrypt"
)

// convertVM is Encrypt (toEncrypted) and Decrypt. Every refusal happens before
// anything changes on disk: not a VM, nothing to do, orphans, hard links,
// busy, no space. Then the policy is set, leftovers removed and the objects
// not yet in the target state converted one by one.
func convertVM(ctx context.Context, vmPath string, opts Options, toEncrypted bool) (Report, error) {
	start := time.Now()
	v, err := resolveVM(vmPath)
	if err != nil {
		return Report{}, err
	}
	rep := Report{VM: v.path}
	unlock, err := lockVM(v)
	if err != nil {
		return rep, err
	}
	defer unlock()

	pol, err := v.policy()
	if err != nil {
		return rep, err
	}
	inv, err := v.scan()
	if err != nil {
		return rep, err
	}
	var todo []object
	for _, o := range inv.objects {
		if o.encrypted != toEncrypted {
			todo = append(todo, o)
		}
	}
	rep.AlreadyDone = len(inv.objects) - len(todo)
	nothingToDo := len(todo) == 0 && len(inv.leftovers) == 0 && len(inv.orphans) == 0 && pol.encrypted == toEncrypted
	switch {
	case nothingToDo && toEncrypted:
		return rep, fmt.Errorf("%s: %w (kek %s, %d objects)", v.path, ErrAlreadyEncrypted, pol.kek, len(inv.objects))
	case nothingToDo:
		return rep, fmt.Errorf("%s: %w (no policy, %d plain objects)", v.path, ErrNotEncrypted, len(inv.objects))
	}
	if err := v.refuseUnsafeCopy(todo, inv.orphans, opts.Force); err != nil {
		return rep, err
	}
	if err := checkSpace(v.backing, todo, toEncrypted); err != nil {
		return rep, err
	}

	if pol.encrypted != toEncrypted {
		value := "none"
		if toEncrypted {
			value = "encrypted"
		}
		if err := v.setPolicy(value); err != nil {
			return rep, err
		}
		rep.PolicySet = true
		if pol, err = v.policy(); err != nil {
			return rep, err
		}
		if pol.encrypted != toEncrypted {
			return rep, fmt.Errorf("%s: %w: policy still reads %v after setting it to %s", v.path, ErrPolicyNotApplied, pol.encrypted, value)
		}
	}
	rep.KEKID = pol.kek
	if err := v.propagatePolicy(toEncrypted); err != nil {
		return rep, err
	}
	for _, l := range inv.leftovers {
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("remove leftover %s: %w", l, err)
		}
		rep.RemovedLeftovers = append(rep.RemovedLeftovers, l)
	}

	verify := func(tmpBacking string) error {
		enc, _, _, err := headerState(tmpBacking)
		if err != nil {
			return err
		}
		if enc != toEncrypted {
			return fmt.Errorf("%s: %w (copy encrypted=%v; does the policy reach %s?)", tmpBacking, ErrPolicyNotApplied, enc, filepath.Dir(tmpBacking))
		}
		return nil
	}
	err = v.convertAll(ctx, todo, opts, verify, toEncrypted, &rep)
	rep.Duration = time.Since(start)
	return rep, err
}

// convertAll copies each object of todo through the mount (reading it from
// the backing directory when fromBacking: plain objects of an encrypted VM)
// and renames the copy over it (objConv.convert), after verify accepted the copy's backing
// file; rep counts what was done.
func (v *vmDir) convertAll(ctx context.Context, todo []object, opts Options, verify func(tmpBacking string) error, fromBacking bool, rep *Report) error {
	c := newObjConv()
	if fromBacking {
		c.source = func(path string) string {
			rel, err := filepath.Rel(v.path, path)
			if err != nil {
				return path
			}
			return filepath.Join(v.backing, rel)
		}
	}
	c.hook = opts.testHook
	c.verify = func(tmp string) error {
		rel, err := filepath.Rel(v.path, tmp)
		if err != nil {
			return err
		}
		return verify(filepath.Join(v.backing, rel))
	}
	if !opts.Force {
		c.busy = func(path string) error {
			rel, _ := filepath.Rel(v.path, path)
			if open := openWriters(path, filepath.Join(v.backing, rel)); len(open) > 0 {
				return &BusyError{VM: v.path, Files: open}
			}
			return nil
		}
	}
	p := Progress{TotalObjects: len(todo)}
	ests := make([]int64, len(todo))
	for i, o := range todo {
		ests[i] = estimate(o)
		p.TotalBytes += ests[i]
	}
	var base int64
	for i, o := range todo {
		var objDone int64
		p.Object = o.path
		if opts.Progress != nil {
			c.progress = func(n int64) {
				objDone += n
				p.Bytes = base + min(objDone, ests[i])
				opts.Progress(p)
			}
			opts.Progress(p)
		}
		// The backing directory too, so the rename is durable there.
		c.syncDirs = []string{filepath.Dir(o.backing)}
		c.allocated = func(size int64) ([]span, error) {
			exts, err := backingExtents(o.backing)
			if err != nil {
				return nil, err
			}
			return plainSpans(exts, o.encrypted, size), nil
		}
		n, err := c.convert(ctx, o.path)
		if err != nil {
			return fmt.Errorf("convert %s: %w", o.path, err)
		}
		rep.Converted++
		rep.Size += o.size
		rep.Bytes += n
		base += ests[i]
		p.Objects, p.Bytes = i+1, base
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	return nil
}

// estimate is how many plaintext data bytes converting o will process.
func estimate(o object) int64 {
	alloc := o.alloc
	if o.encrypted {
		alloc = alloc / objcrypt.CipherBlockSize * objcrypt.PlainBlockSize
	}
	return max(0, min(alloc, o.size))
}

// checkSpace needs room on the backing store for the copy of the largest
// object (one copy exists at a time).
func checkSpace(backing string, todo []object, toEncrypted bool) error {
	var need int64
	var largest string
	for _, o := range todo {
		n := o.alloc
		if toEncrypted {
			// Every 4096-byte block grows by nonce and tag, plus the
			// header region.
			n = n/objcrypt.PlainBlockSize*objcrypt.CipherBlockSize + n%objcrypt.PlainBlockSize + objcrypt.HeaderRegionSize + objcrypt.CipherBlockSize
		}
		if n > need {
			need, largest = n, o.rel
		}
	}
	if need == 0 {
		return nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(backing, &sfs); err != nil {
		return fmt.Errorf("statfs %s: %w", backing, err)
	}
	avail := int64(sfs.Bavail) * sfs.Bsize
	if need > avail {
		return fmt.Errorf("%w: converting %s needs %d bytes (%s) for its copy, %d bytes (%s) are available on %s",
			ErrNoSpace, largest, need, humanize.IBytes(uint64(need)), avail, humanize.IBytes(uint64(avail)), backing)
	}
	return nil
}

// refuseUnsafeCopy is what every copy-and-rename run checks first:
// orphaned temp copies (they may hold the only copy of some data), hard
// links among the objects to copy (a rename would split them) and, unless
// forced, processes writing to the VM.
func (v *vmDir) refuseUnsafeCopy(objects []object, orphans []string, force bool) error {
	if len(orphans) > 0 {
		return fmt.Errorf("%s: %w: %s; it may hold the only copy of its data: check it and delete or rename it by hand",
			v.path, ErrOrphan, strings.Join(orphans, ", "))
	}
	var linked []string
	for _, o := range objects {
		if o.nlink > 1 {
			linked = append(linked, fmt.Sprintf("%s (%d links)", o.rel, o.nlink))
		}
	}
	if len(linked) > 0 {
		return fmt.Errorf("%s: %w: %s; copy and rename would split the links: remove the extra links first",
			v.path, ErrHardLink, strings.Join(linked, ", "))
	}
	if !force {
		if open := openWriters(v.path, v.backing); len(open) > 0 {
			return &BusyError{VM: v.path, Files: open}
		}
	}
	return nil
}

// lockVM takes an exclusive flock on the backing VM directory so two
// conversions of one VM never run at once. The lock dies with the process.
func lockVM(v *vmDir) (func(), error) {
	fd, err := unix.Open(v.backing, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s to lock it: %w", v.backing, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w: another conversion of this VM is running", v.path, ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", v.backing, err)
	}
	return func() { unix.Close(fd) }, nil
}

// propagatePolicy makes the subdirectories of the VM agree with its policy,
// so copies written there get the right state. The filesystem gives a new
// subdirectory its parent's policy at mkdir; subdirectories that existed
// before the VM was encrypted have none, and setting "encrypted" on them
// through the mount would create another key. So, as the filesystem does at
// mkdir, the VM directory's policy record is copied to them in the backing
// store (the CLI runs as root on the host). Decrypt removes the policy of
// each subdirectory through the mount.
func (v *vmDir) propagatePolicy(toEncrypted bool) error {
	var raw []byte
	if toEncrypted {
		var err error
		if raw, err = xattr.Get(v.backing, PolicyAttr); err != nil {
			return fmt.Errorf("read policy record of %s: %w", v.backing, err)
		}
	}
	return filepath.WalkDir(v.backing, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || p == v.backing {
			return nil
		}
		cur, err := xattr.Get(p, PolicyAttr)
		has := err == nil
		if err != nil && !errors.Is(err, xattr.ENOATTR) {
			return fmt.Errorf("read policy of %s: %w", p, err)
		}
		switch {
		case toEncrypted && !has:
			if err := xattr.Set(p, PolicyAttr, raw); err != nil {
				return fmt.Errorf("give subdirectory %s the VM policy: %w", p, err)
			}
		case toEncrypted && !bytes.Equal(cur, raw):
			// Its own key (made by hand); copies there use it.
		case !toEncrypted && has:
			rel, err := filepath.Rel(v.backing, p)
			if err != nil {
				return err
			}
			if err := xattr.Set(filepath.Join(v.path, rel), PolicyAttr, []byte("none")); err != nil {
				return fmt.Errorf("remove policy of subdirectory %s: %w", filepath.Join(v.path, rel), err)
			}
		}
		return nil
	})
}
