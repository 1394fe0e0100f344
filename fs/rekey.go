package fs

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	"golang.org/x/sys/unix"
)

// KeyDestroyer is the optional part of Keys that shred needs: revoke and
// destroy a KEK at the KMS and forget every copy of it on this host. fs
// checks for it at run time so the keyring stays behind an interface
// (keyring.Ring implements it when its source can revoke and destroy).
type KeyDestroyer interface {
	// DestroyKEK revokes and destroys KEK id at the KMS and evicts it from
	// every cache. Destroying a key that is already gone is not an error.
	DestroyKEK(ctx context.Context, id string) error
}

// Write-only values of the policy virtual xattr, next to "encrypted" and
// "none" (see setPolicy).
const (
	policyRekey     = "rekey"      // shallow: new KEK, DEK re-wrapped, headers rewritten in place
	policyRekeyDeep = "rekey-deep" // new KEK and DEK in the policy; vmctl re-encrypts the objects
	policyShred     = "shred"      // revoke and destroy every KEK of the VM
)

// kmsError marks a failure to talk to the KMS during a policy change with
// ENOKEY, so the CLI can tell "key server unreachable" (nothing changed)
// from other failures. A key errno the key source chose (EKEYREVOKED for
// a destroyed key...) is kept; any other errno in the chain is the
// transport's (ECONNREFUSED from a refused dial) and must not reach the
// caller, who would otherwise see a different error for each way the KMS
// can be down.
func kmsError(err error) error {
	for _, e := range []syscall.Errno{syscall.ENOKEY, syscall.EKEYREVOKED, syscall.EKEYREJECTED, syscall.EKEYEXPIRED} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", e, err)
		}
	}
	return fmt.Errorf("%w: %w", syscall.ENOKEY, err)
}

// newWrap unwraps pol's DEK (or, for a deep rekey, makes a new one), creates
// a new KEK named after the directory and wraps the DEK under it. It returns
// the new policy and the DEK, which the caller zeroes. Nothing is stored.
func (r *Root) newWrap(ctx context.Context, d *node, pol *objcrypt.Policy, deep bool) (*objcrypt.Policy, objcrypt.Key, error) {
	var dek objcrypt.Key
	var err error
	if deep {
		dek, err = objcrypt.NewDEK(r.rand)
	} else {
		dek, err = r.unwrapPolicy(ctx, pol)
	}
	if err != nil {
		return nil, nil, err
	}
	name := objcrypt.KEKName(r.cfg.DatastoreID, pol.VMID)
	kekID, err := r.cfg.Keys.NewKEK(ctx, name)
	if err != nil {
		dek.Zero()
		r.log.Error("cryptds: rekey: cannot create KEK", "dir", d.relPath(), "name", name, "err", err)
		return nil, nil, kmsError(fmt.Errorf("create KEK %s: %w", name, err))
	}
	kek, err := r.cfg.Keys.KEK(ctx, kekID)
	if err != nil {
		dek.Zero()
		r.log.Error("cryptds: rekey: cannot fetch new KEK", "dir", d.relPath(), "kek", kekID, "err", err)
		return nil, nil, kmsError(fmt.Errorf("fetch KEK %s: %w", kekID, err))
	}
	defer kek.Zero()
	wrapped, err := objcrypt.WrapDEK(kek, dek, kekID, pol.VMID, r.rand)
	if err != nil {
		dek.Zero()
		return nil, nil, fmt.Errorf("wrap DEK for %s: %w", d.relPath(), err)
	}
	np := *pol
	np.KEKID, np.KMS, np.WrappedDEK, np.Rotated = kekID, r.cfg.KMSName, wrapped, time.Now().UTC()
	return &np, dek, nil
}

// unwrapPolicy returns the DEK of a policy (caller zeroes it).
func (r *Root) unwrapPolicy(ctx context.Context, pol *objcrypt.Policy) (objcrypt.Key, error) {
	ctx, cancel := keyContext(ctx)
	defer cancel()
	kek, err := r.cfg.Keys.KEK(ctx, pol.KEKID)
	if err != nil {
		return nil, kmsError(fmt.Errorf("fetch KEK %s: %w", pol.KEKID, err))
	}
	defer kek.Zero()
	dek, err := objcrypt.UnwrapDEK(kek, pol.WrappedDEK, pol.KEKID, pol.VMID)
	if err != nil {
		return nil, fmt.Errorf("policy DEK does not unwrap under KEK %s (%v): %w", pol.KEKID, err, syscall.EKEYREJECTED)
	}
	return dek, nil
}

// vmDirOf resolves the recorded VM that directory d is the directory of;
// key operations act on a whole VM, from its directory.
func (r *Root) vmDirOf(d *node, dfd int, op string) (vmreg.VM, error) {
	dv, err := r.dirVM(d, dfd)
	if err != nil {
		return vmreg.VM{}, err
	}
	rel := d.relPath()
	switch {
	case !dv.has || dv.vm.State == vmreg.Decrypted:
		return vmreg.VM{}, fmt.Errorf("%s has no encryption policy to %s: %w", rel, op, syscall.ENODATA)
	case dv.vm.Dir != rel:
		return vmreg.VM{}, fmt.Errorf("%s is part of VM %s: %s the VM directory itself: %w", rel, dv.vm.Dir, op, syscall.EINVAL)
	}
	return dv.vm, nil
}

// rekey handles "rekey" (shallow) and "rekey-deep" on a VM directory.
//
// Shallow: a new KEK is created (named after the VM id), the DEK
// re-wrapped under it, and the new policy recorded and stored first (so
// objects created meanwhile by the running VM already get the new KEK);
// then every object header of this VM is rewritten in place and re-read
// and checked against the new KEK. Objects of other VMs found in the tree
// are logged and left alone: their keys are not this VM's to rewrap. Data
// blocks are not touched and open handles keep working (their object key
// comes from the unchanged DEK). See rewriteHeader for the crash ordering
// of one object.
//
// Deep: only the policy is replaced, by one with a new KEK and a new DEK
// (same VM id). Objects keep their headers and stay readable under the old
// KEK until vmctl re-encrypts them by copy and rename.
//
// The old KEK stays in the record (retired, with the time of this rekey):
// ciphertext backups taken before it need it, and shred destroys it too.
func (r *Root) rekey(ctx context.Context, d *node, dfd int, deep bool) error {
	vm, err := r.vmDirOf(d, dfd, "rekey")
	if err != nil {
		return err
	}
	if vm.State == vmreg.Shredded {
		return fmt.Errorf("%s: VM %s was shredded: %w", vm.Dir, vm.ID, syscall.EKEYREVOKED)
	}
	pol, err := vm.ParsedPolicy()
	if err != nil {
		return err
	}
	np, dek, err := r.newWrap(ctx, d, pol, deep)
	if err != nil {
		return err
	}
	defer dek.Zero()
	raw, err := np.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode policy for %s: %w", vm.Dir, err)
	}
	now := time.Now().UTC()
	for i := range vm.KEKs {
		if vm.KEKs[i].Until.IsZero() {
			vm.KEKs[i].Until = now
		}
	}
	vm.KEKs = append(vm.KEKs, vmreg.KEK{ID: np.KEKID, Since: now})
	vm.Policy = raw
	if err := r.vms.Put(vm, false); err != nil {
		return fmt.Errorf("record the new KEK of %s: %w", vm.Dir, err)
	}
	if err := r.storeVMPolicy(dfd, vm.Dir, vm.ID, raw); err != nil {
		r.log.Error("cryptds: rekey: cannot store the new policy", "dir", vm.Dir, "err", err)
		return err
	}
	if deep {
		r.log.Info("cryptds: deep rekey: new policy stored; objects are re-encrypted by copy", "dir", vm.Dir,
			"old_kek", pol.KEKID, "kek", np.KEKID)
		return nil
	}
	newKEK, err := r.cfg.Keys.KEK(ctx, np.KEKID)
	if err != nil {
		return kmsError(fmt.Errorf("fetch KEK %s: %w", np.KEKID, err))
	}
	defer newKEK.Zero()
	var n, foreign int
	var failed []string
	err = walkTree(dfd, vm.Dir, func(dirfd int, name, rel string, st *unix.Stat_t) error {
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil
		}
		done, err := r.rekeyObject(ctx, dirfd, name, np, dek, newKEK)
		switch {
		case errors.Is(err, errForeignObject):
			foreign++
			r.log.Warn("cryptds: rekey: object of another VM left alone", "file", rel, "err", err)
		case err != nil:
			r.log.Error("cryptds: rekey: object not rekeyed", "file", rel, "err", err)
			failed = append(failed, rel)
		case done:
			n++
		}
		return nil
	})
	if err == nil && len(failed) > 0 {
		err = fmt.Errorf("%d objects not rekeyed (first %s): %w", len(failed), failed[0], syscall.EIO)
	}
	if err != nil {
		return fmt.Errorf("rekey %s: %w", vm.Dir, err)
	}
	r.log.Info("cryptds: shallow rekey done", "dir", vm.Dir, "old_kek", pol.KEKID, "kek", np.KEKID, "objects", n, "foreign_objects", foreign)
	return nil
}

// rekeyObject rewrites the header of one object so it names the new KEK,
// and checks the result. Objects without a header are skipped (false).
func (r *Root) rekeyObject(ctx context.Context, dirfd int, name string, np *objcrypt.Policy, dek, newKEK objcrypt.Key) (bool, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = unix.Openat(dirfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return false, fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Fgetxattr(fd, xattrHeader, nil); errors.Is(err, unix.ENODATA) {
		return false, nil // a plain object
	}
	r.hdrMu.Lock()
	defer r.hdrMu.Unlock()
	h, err := r.readHeaderTolerant(ctx, fd, name)
	if err != nil {
		return false, err
	}
	if h.VMID != np.VMID {
		return false, fmt.Errorf("%w: header names VM %s", errForeignObject, h.VMID)
	}
	nh := *h
	nh.KEKID = np.KEKID
	// Reuse the policy's wrap when the DEK is the policy's, so the header
	// keeps matching the policy byte for byte.
	odek, err := r.unwrapHeader(ctx, h)
	if err != nil {
		return false, err
	}
	if subtle.ConstantTimeCompare(odek, dek) == 1 {
		nh.WrappedDEK = bytes.Clone(np.WrappedDEK)
	} else {
		nh.WrappedDEK, err = objcrypt.WrapDEK(newKEK, odek, np.KEKID, h.VMID, r.rand)
	}
	odek.Zero()
	if err != nil {
		return false, err
	}
	if err := rewriteHeader(fd, &nh); err != nil {
		return false, err
	}
	// Re-check: both copies now read back equal and open under the new KEK.
	got, err := r.readHeaderInner(fd)
	if err != nil {
		return false, fmt.Errorf("after rewrite: %w", err)
	}
	if got.KEKID != np.KEKID {
		return false, fmt.Errorf("after rewrite the header names KEK %s: %w", got.KEKID, objcrypt.ErrHeader)
	}
	chk, err := objcrypt.UnwrapDEK(newKEK, got.WrappedDEK, got.KEKID, got.VMID)
	if err != nil {
		return false, fmt.Errorf("after rewrite: %w", err)
	}
	chk.Zero()
	return true, nil
}

// rewriteHeader replaces both header copies of an open object in place.
//
// Crash ordering: the in-file region is written first, then the xattr
// (which is what makes the file encrypted and is read first), then the file
// is fsync'd. A crash in between leaves the region naming the new KEK and
// the xattr the old one; both wrap the same DEK for the same object, and
// readHeaderTolerant accepts that pair and repairs the region (as long as
// both KEKs exist, which is why the old KEK may only be destroyed after the
// rekey has finished). An empty object (backing size 0) has no region yet.
func rewriteHeader(fd int, h *objcrypt.Header) error {
	xb, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if st.Size > 0 {
		region, err := h.MarshalRegion()
		if err != nil {
			return err
		}
		if err := pwriteFull(fd, region, 0); err != nil {
			return fmt.Errorf("write header region: %w", err)
		}
	}
	if err := unix.Fsetxattr(fd, xattrHeader, xb, unix.XATTR_REPLACE); err != nil {
		return fmt.Errorf("write header xattr: %w", err)
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

// unwrapHeader returns the DEK of an object header (caller zeroes it).
func (r *Root) unwrapHeader(ctx context.Context, h *objcrypt.Header) (objcrypt.Key, error) {
	ctx, cancel := keyContext(ctx)
	defer cancel()
	kek, err := r.cfg.Keys.KEK(ctx, h.KEKID)
	if err != nil {
		return nil, kmsError(fmt.Errorf("fetch KEK %s: %w", h.KEKID, err))
	}
	defer kek.Zero()
	dek, err := objcrypt.UnwrapDEK(kek, h.WrappedDEK, h.KEKID, h.VMID)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, syscall.EKEYREJECTED)
	}
	return dek, nil
}

// readHeaderTolerant is readHeaderInner that also accepts the one
// disagreement an interrupted shallow rekey can leave: both copies parse,
// name the same object and VM, and unwrap (under their two KEKs) to the
// same DEK. The region is then rewritten from the xattr (the authoritative
// copy) and the xattr's header returned. The caller holds hdrMu.
func (r *Root) readHeaderTolerant(ctx context.Context, fd int, path string) (*objcrypt.Header, error) {
	h, err := r.readHeaderInner(fd)
	var mm *headerMismatch
	if !errors.As(err, &mm) {
		return h, err
	}
	x, reg := mm.xattr, mm.region
	if x.ObjectID != reg.ObjectID || x.VMID != reg.VMID || x.Version != reg.Version || x.Suite != reg.Suite {
		return nil, err
	}
	a, aerr := r.unwrapHeader(ctx, x)
	if aerr != nil {
		return nil, fmt.Errorf("%w (and the xattr copy does not unwrap: %v)", err, aerr)
	}
	defer a.Zero()
	b, berr := r.unwrapHeader(ctx, reg)
	if berr != nil {
		return nil, fmt.Errorf("%w (and the region copy does not unwrap: %v)", err, berr)
	}
	defer b.Zero()
	if subtle.ConstantTimeCompare(a, b) != 1 {
		return nil, err
	}
	region, merr := x.MarshalRegion()
	if merr != nil {
		return nil, merr
	}
	// The caller's descriptor may be read-only: repair through our own.
	wfd, werr := unix.Open(procPath(fd), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if werr == nil {
		werr = pwriteFull(wfd, region, 0)
		if werr == nil {
			werr = unix.Fdatasync(wfd)
		}
		unix.Close(wfd)
	}
	if werr != nil {
		r.log.Warn("cryptds: header copies of an interrupted rekey agree on the key; region not repaired", "file", path, "err", werr)
		return x, nil
	}
	r.log.Warn("cryptds: repaired the in-file header of an interrupted rekey", "file", path, "kek", x.KEKID, "region_kek", reg.KEKID)
	return x, nil
}

// headerMismatch is readHeaderInner's error when both copies parse but
// differ; it matches objcrypt.ErrHeader.
type headerMismatch struct {
	xattr, region *objcrypt.Header
}

func (e *headerMismatch) Error() string {
	return "header xattr and in-file header region disagree"
}

func (e *headerMismatch) Unwrap() error { return objcrypt.ErrHeader }

// shred revokes and destroys every KEK that belongs to the VM of
// directory d, then makes this mount forget them: open objects under those
// keys fail from now on, and so does every later open, also after a
// remount (the record says shredded).
//
// A KEK belongs to the VM when the mount's record lists it (created,
// rekeyed or adopted here) or the KMS holds it under the VM's name
// (objcrypt.KEKName: every KEK of the VM, also those of rekeys done on
// another host). Nothing read from the backing store alone can add a key:
// objects and policies in the tree that name another VM, or a KEK not
// known as this VM's, are logged and their keys left alone, so a file or
// policy copied in from another VM cannot make a shred destroy that VM's
// keys.
func (r *Root) shred(ctx context.Context, d *node, dfd int) error {
	kd, ok := r.cfg.Keys.(KeyDestroyer)
	if !ok {
		return fmt.Errorf("the key source cannot destroy keys: %w", syscall.EOPNOTSUPP)
	}
	vm, err := r.vmDirOf(d, dfd, "shred")
	if err != nil {
		return err
	}
	ids := map[string]bool{}
	for _, k := range vm.KEKs {
		ids[k.ID] = true
	}
	if pol, err := vm.ParsedPolicy(); err == nil {
		ids[pol.KEKID] = true
	}
	var locateErr error
	if kl, ok := r.cfg.Keys.(KeyLocator); ok {
		found, err := kl.LocateKEKs(ctx, objcrypt.KEKName(r.cfg.DatastoreID, vm.ID))
		if err != nil {
			locateErr = err
			r.log.Error("cryptds: shred: cannot ask the KMS for the VM's other KEKs", "dir", vm.Dir, "err", err)
		}
		for _, id := range found {
			if objcrypt.CheckPrintable(id) == nil && !vm.HasKEK(id) {
				vm.KEKs = append(vm.KEKs, vmreg.KEK{ID: id})
			}
			ids[id] = true
		}
	}
	r.reportUnowned(dfd, vm, ids)
	// Forget first: from here on this mount serves nothing under them,
	// even if the KMS cannot be told right now.
	r.forgetKEKs(ids, map[objcrypt.VMID]bool{vm.ID: true})
	vm.State = vmreg.Shredded
	if err := r.vms.Put(vm, false); err != nil {
		r.log.Error("cryptds: shred: cannot record the VM as shredded", "dir", vm.Dir, "err", err)
	}
	var failed []string
	now := time.Now().UTC()
	for i, k := range vm.KEKs {
		if err := kd.DestroyKEK(ctx, k.ID); err != nil {
			r.log.Error("cryptds: shred: KEK not destroyed", "dir", vm.Dir, "kek", k.ID, "err", err)
			failed = append(failed, k.ID)
			continue
		}
		if vm.KEKs[i].Destroyed.IsZero() {
			vm.KEKs[i].Destroyed = now
		}
		r.log.Warn("cryptds: KEK revoked and destroyed (shred): the data under it is unrecoverable", "dir", vm.Dir, "kek", k.ID,
			"in_use_since", stamp(k.Since), "until", stamp(k.Until))
	}
	if err := r.vms.Put(vm, false); err != nil {
		r.log.Error("cryptds: shred: cannot record the destroyed KEKs", "dir", vm.Dir, "err", err)
	}
	switch {
	case len(failed) > 0:
		return kmsError(fmt.Errorf("shred %s: %d of %d KEKs not destroyed (first %s); run it again", vm.Dir, len(failed), len(vm.KEKs), failed[0]))
	case locateErr != nil:
		return kmsError(fmt.Errorf("shred %s: the KMS could not list the VM's KEKs; run it again: %w", vm.Dir, locateErr))
	}
	return nil
}

// maxUnownedReports bounds the log lines one shred writes about objects
// it leaves alone.
const maxUnownedReports = 20

// reportUnowned logs what the VM's tree references that shred will not
// destroy: objects and policies of other VMs, and KEKs named by this VM's
// objects that are not known to be this VM's.
func (r *Root) reportUnowned(dfd int, vm vmreg.VM, ids map[string]bool) {
	reported := 0
	report := func(msg string, args ...any) {
		if reported < maxUnownedReports {
			r.log.Warn(msg, args...)
		}
		reported++
	}
	_ = walkTree(dfd, vm.Dir, func(dirfd int, name, rel string, st *unix.Stat_t) error {
		p := procPathAt(dirfd, name)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if raw, err := getxattrAlloc(p, xattrPolicy); err == nil {
				if pol, err := objcrypt.ParsePolicy(raw); err == nil && pol.VMID != vm.ID {
					report("cryptds: shred: a policy of another VM in this VM's tree; its keys are left alone", "dir", rel, "vm", pol.VMID.String())
				}
			}
		case unix.S_IFREG:
			raw, err := getxattrAlloc(p, xattrHeader)
			if err != nil {
				return nil
			}
			h, err := objcrypt.ParseHeader(raw)
			switch {
			case err != nil:
			case h.VMID != vm.ID:
				report("cryptds: shred: an object of another VM in this VM's tree; its keys are left alone", "file", rel, "vm", h.VMID.String())
			case !ids[h.KEKID]:
				report("cryptds: shred: an object names a KEK not known as this VM's; it is not destroyed (destroy it with the KMS's tools if it is)", "file", rel, "kek", h.KEKID)
			}
		}
		return nil
	})
	if reported > maxUnownedReports {
		r.log.Warn("cryptds: shred: more objects left alone than logged", "dir", vm.Dir, "count", reported)
	}
}

// forgetKEKs marks KEK ids and VM ids as shredded for this mount and
// revokes every open object under them (by VM id too: a handle opened
// before a shallow rekey still names the old KEK), dropping the kernel's
// cached pages of those files so nothing decrypted stays readable.
func (r *Root) forgetKEKs(ids map[string]bool, vms map[objcrypt.VMID]bool) {
	r.objMu.Lock()
	for id := range ids {
		r.shredded[id] = true
	}
	for vm := range vms {
		r.shredVMs[vm] = true
	}
	var nodes []*node
	for o, n := range r.live {
		if ids[o.kek] || vms[o.vm] {
			o.revoked.Store(true)
			nodes = append(nodes, n)
		}
	}
	r.objMu.Unlock()
	for _, n := range nodes {
		n.cache.block() // for good: no page may be stored after the drop
		_ = n.NotifyContent(0, 0)
	}
}

// isShredded reports whether this mount shredded KEK id or VM vm.
func (r *Root) isShredded(id string, vm objcrypt.VMID) bool {
	r.objMu.Lock()
	defer r.objMu.Unlock()
	return r.shredded[id] || r.shredVMs[vm]
}

// errShredded is what reads, writes and opens of a shredded VM's objects
// return: EKEYREVOKED reaches the caller, the log line names the key.
func (r *Root) errShredded(path, kek string) error {
	r.log.Error("cryptds: key destroyed: the object's KEK was shredded", "file", path, "kek", kek)
	return fmt.Errorf("%s: KEK %s destroyed (shredded): %w", path, kek, syscall.EKEYREVOKED)
}

// walkTree calls fn for every entry below the directory dfd (depth first,
// directories before their contents, dfd itself first with name "."),
// using descriptors only. rel is the entry's path for messages.
func walkTree(dfd int, rel string, fn func(dirfd int, name, rel string, st *unix.Stat_t) error) error {
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", rel, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	if err := fn(fd, ".", rel, &st); err != nil {
		return err
	}
	return walkEntries(fd, rel, fn)
}

func walkEntries(fd int, rel string, fn func(dirfd int, name, rel string, st *unix.Stat_t) error) error {
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return fmt.Errorf("read directory %s: %w", rel, err)
		}
		if n == 0 {
			return nil
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				continue // raced with a delete
			}
			crel := joinRel(rel, name)
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if err := fn(fd, name, crel, &st); err != nil {
					return err
				}
			case unix.S_IFDIR:
				sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					continue
				}
				err = fn(sub, ".", crel, &st)
				if err == nil {
					err = walkEntries(sub, crel, fn)
				}
				unix.Close(sub)
				if err != nil {
					return err
				}
			}
		}
	}
}
