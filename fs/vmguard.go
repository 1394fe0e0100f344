package fs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Which VM a directory belongs to is decided by the mount's own record
// (vmreg, kept in the host's state directory), never by the backing
// store alone: the policy xattr there can be deleted, copied or rolled
// back by whoever writes the backing store. The rules (THREAT-MODEL.md):
//
//   - A directory at or below a recorded VM directory belongs to that VM.
//     While the VM is encrypted, new files there are created from the
//     recorded policy (a missing, foreign or older policy xattr is logged
//     and ignored), and a plain object there is never served: no
//     plaintext can reach the backing store of an encrypted VM.
//   - An encrypted object is served only in a directory of its own VM
//     (the header's VM id): one VM's object copied into another VM, or
//     into a plain directory, is refused before any key is fetched.
//   - A policy found on the backing store for a VM id the record does not
//     know is adopted (a VM from before the record, or restored from a
//     ciphertext backup); one whose VM id is recorded for another
//     directory is a copy and is refused.
//   - Renames and hard links never cross from one VM to another or
//     between a VM and plain directories (EXDEV: mv copies, so the data
//     is re-encrypted under the target's key).

// errForeignObject and friends mark refusals of this file; all reach the
// caller as EIO (wrapped) and are logged once per place.
var (
	errForeignObject = errors.New("encrypted object of another VM")
	errPlainInVM     = errors.New("plain object inside an encrypted VM")
	errCopiedPolicy  = errors.New("policy copied from another VM directory")
)

// dirVM is what a directory is for the mount: part of a recorded VM (vm
// set) or plain.
type dirVM struct {
	vm  vmreg.VM
	has bool
	// pol is the policy new files here get; nil: new files are plain.
	pol *objcrypt.Policy
}

// encrypted reports whether the directory belongs to a VM whose objects
// must all be encrypted.
func (dv dirVM) encrypted() bool { return dv.has && dv.vm.State != vmreg.Decrypted }

// domain is what renames and links must not cross: the VM id of an
// encrypted (or shredded) VM, the zero id for plain directories.
func (dv dirVM) domain() objcrypt.VMID {
	if dv.encrypted() {
		return dv.vm.ID
	}
	return objcrypt.VMID{}
}

// warnOnce logs msg once per key for the life of the mount, so a hostile
// backing store cannot flood the log through repeated opens.
func (r *Root) warnOnce(key string, msg string, args ...any) {
	if _, seen := r.warned.LoadOrStore(key, true); seen {
		return
	}
	r.log.Error(msg, args...)
}

// dirVM resolves directory node d (backing descriptor dfd), and logs
// where a recorded VM's directory has lost or changed its policy xattr.
func (r *Root) dirVM(d *node, dfd int) (dirVM, error) {
	return r.resolveDir(d, dfd, true)
}

// placeOf is dirVM for opens, links and renames: a recorded VM's policy
// xattr is not read (the record decides; creates and policy reads report
// a changed xattr), which saves a getxattr per open.
func (r *Root) placeOf(d *node, dfd int) (dirVM, error) {
	return r.resolveDir(d, dfd, false)
}

func (r *Root) resolveDir(d *node, dfd int, verify bool) (dirVM, error) {
	rel := d.relPath()
	if v, ok := r.vms.Lookup(rel); ok {
		return r.recordedDir(rel, dfd, v, verify)
	}
	pol, raw, err := r.backingPolicy(d, dfd)
	if err != nil || pol == nil {
		return dirVM{}, err
	}
	if other, ok := r.vms.ByID(pol.VMID); ok {
		r.stats.hdrErr.Add(1)
		r.warnOnce("copied:"+rel, "cryptds: refusing a directory whose policy names a VM recorded for another directory (a copied policy): nothing is created or served here",
			"dir", rel, "vm", pol.VMID.String(), "vm_dir", other.Dir)
		return dirVM{}, fmt.Errorf("%s: %w (VM %s belongs to %s): %w", rel, errCopiedPolicy, pol.VMID, other.Dir, syscall.EIO)
	}
	v, err := r.adopt(d, pol, raw)
	if err != nil {
		return dirVM{}, err
	}
	return r.recordedDir(rel, dfd, v, verify)
}

// backingPolicy reads and parses d's policy xattr (nil: none).
func (r *Root) backingPolicy(d *node, dfd int) (*objcrypt.Policy, []byte, error) {
	raw, err := getxattrAlloc(procPath(dfd), xattrPolicy)
	if errors.Is(err, unix.ENODATA) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read policy of %s: %w", d.relPath(), err)
	}
	pol, err := objcrypt.ParsePolicy(raw)
	if err != nil {
		r.warnOnce("badpolicy:"+d.relPath(), "cryptds: unusable encryption policy; this directory is refused",
			"dir", d.relPath(), "err", err)
		return nil, nil, fmt.Errorf("policy of %s: %w", d.relPath(), err)
	}
	return pol, raw, nil
}

// adopt records a VM found on the backing store, rooted at the topmost
// ancestor of d whose policy names the same VM (subdirectories carry a
// copy of their VM's policy).
func (r *Root) adopt(d *node, pol *objcrypt.Policy, raw []byte) (vmreg.VM, error) {
	top := d
	for {
		_, pi := top.Parent()
		if pi == nil {
			break
		}
		p, ok := asNode(pi.Operations())
		if !ok {
			break
		}
		pfd, err := p.pathFd()
		if err != nil {
			break
		}
		pp, _, err := r.backingPolicy(p, pfd)
		if err != nil || pp == nil || pp.VMID != pol.VMID {
			break
		}
		top = p
	}
	canon, err := pol.MarshalBinary()
	if err != nil {
		return vmreg.VM{}, err
	}
	v := vmreg.VM{ID: pol.VMID, Dir: top.relPath(), State: vmreg.Encrypted, Policy: canon, Adopted: true,
		KEKs: []vmreg.KEK{{ID: pol.KEKID, Since: time.Now().UTC()}}}
	if err := r.vms.Put(v, false); err != nil {
		if got, ok := r.vms.ByID(pol.VMID); ok && got.Dir == v.Dir {
			return got, nil // another request adopted it first
		}
		return vmreg.VM{}, fmt.Errorf("record VM %s at %s: %w", pol.VMID, v.Dir, err)
	}
	r.log.Info("cryptds: recorded an encrypted VM found on the backing store", "dir", v.Dir, "vm", pol.VMID.String(), "kek", pol.KEKID)
	return v, nil
}

// recordedDir is dirVM for a directory inside recorded VM v. The backing
// policy xattr is only compared with the record, and a difference logged:
// new files always get the recorded policy.
func (r *Root) recordedDir(rel string, dfd int, v vmreg.VM, verify bool) (dirVM, error) {
	dv := dirVM{vm: v, has: true}
	if v.State != vmreg.Encrypted {
		return dv, nil
	}
	pol, err := v.ParsedPolicy()
	if err != nil {
		return dirVM{}, err
	}
	dv.pol = pol
	if !verify {
		return dv, nil
	}
	raw, err := getxattrAlloc(procPath(dfd), xattrPolicy)
	switch {
	case errors.Is(err, unix.ENODATA):
		r.stats.hdrErr.Add(1)
		r.warnOnce("vanished:"+rel, "cryptds: the policy xattr of a directory of an encrypted VM is gone from the backing store; new files there are still encrypted with the recorded policy (cryptds fsck reports it; cryptds vm rekey rewrites it)",
			"dir", rel, "vm", v.ID.String(), "vm_dir", v.Dir)
	case err != nil:
		return dirVM{}, fmt.Errorf("read policy of %s: %w", rel, err)
	default:
		bp, perr := objcrypt.ParsePolicy(raw)
		if perr != nil || bp.VMID != pol.VMID || bp.KEKID != pol.KEKID {
			r.stats.hdrErr.Add(1)
			r.warnOnce("differs:"+rel, "cryptds: the policy xattr of a directory of an encrypted VM differs from the mount's record (tampered, copied or rolled back); new files there use the recorded policy",
				"dir", rel, "vm", v.ID.String(), "kek", pol.KEKID)
		}
	}
	return dv, nil
}

// placeVMs resolves every directory node n is known in: its current
// parent and every directory it was looked up or created in (one per hard
// link; an unlinked or unnamed file keeps the one it was born in).
func (n *node) placeVMs() ([]dirVM, []*node, error) {
	n.mu.Lock()
	dirs := append([]*node(nil), n.dirs...)
	n.mu.Unlock()
	if _, pi := n.Parent(); pi != nil {
		if p, ok := asNode(pi.Operations()); ok && !slices.Contains(dirs, p) {
			dirs = append(dirs, p)
		}
	}
	out := make([]dirVM, 0, len(dirs))
	for _, d := range dirs {
		dfd, err := d.pathFd()
		if err != nil {
			return nil, nil, err
		}
		dv, err := n.r.placeOf(d, dfd)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, dv)
	}
	return out, dirs, nil
}

// checkEncryptedPlace refuses to serve an encrypted object with header h
// anywhere but in directories of its own VM. A backing inode hard-linked
// into another VM is refused under every name: FUSE opens an inode, not a
// path, so the mount cannot tell through which name it is asked. The check
// runs before any key is fetched, so a planted header cannot even make
// the mount ask the KMS.
func (n *node) checkEncryptedPlace(h *objcrypt.Header) error {
	dvs, dirs, err := n.placeVMs()
	if err != nil {
		return err
	}
	if len(dvs) == 0 {
		return fmt.Errorf("%s: %w (no directory known): %w", n.relPath(), errForeignObject, syscall.EIO)
	}
	for i, dv := range dvs {
		if dv.has && dv.vm.ID == h.VMID {
			continue
		}
		where := "a plain directory"
		if dv.has {
			where = "the directory of VM " + dv.vm.ID.String()
		}
		where += " (" + dirs[i].relPath() + ")"
		n.r.stats.hdrErr.Add(1)
		n.r.warnOnce("foreign:"+n.relPath(), "cryptds: refusing an encrypted object outside its VM: it was copied, moved or hard-linked on the backing store (cryptds fsck reports it)",
			"file", n.relPath(), "object_vm", h.VMID.String(), "in", where)
		return fmt.Errorf("%s: %w (VM %s) in %s: %w", n.relPath(), errForeignObject, h.VMID, where, syscall.EIO)
	}
	return nil
}

// checkPlainPlace refuses to serve a plain (headerless) object inside an
// encrypted VM: it was planted, stripped of its header, or left by an
// interrupted vm encrypt (which reads such objects from the backing
// directory, not through the mount). Serving it would let the VM's next
// writes reach the backing store in plaintext.
func (n *node) checkPlainPlace() error {
	dvs, _, err := n.placeVMs()
	if err != nil {
		return err
	}
	for _, dv := range dvs {
		if !dv.encrypted() {
			continue
		}
		n.r.stats.hdrErr.Add(1)
		n.r.warnOnce("plain:"+n.relPath(), "cryptds: refusing a plain object inside an encrypted VM (planted, header removed, or an unfinished vm encrypt): run cryptds fsck on the datastore, or cryptds vm encrypt to convert it",
			"file", n.relPath(), "vm", dv.vm.ID.String(), "vm_dir", dv.vm.Dir)
		return fmt.Errorf("%s: %w %s: %w", n.relPath(), errPlainInVM, dv.vm.Dir, syscall.EIO)
	}
	return nil
}

// createPolicy is the policy a new regular file in directory n gets (nil:
// plain), refusing where nothing may be created.
func (n *node) createPolicy(dfd int) (*objcrypt.Policy, error) {
	dv, err := n.r.dirVM(n, dfd)
	if err != nil {
		return nil, err
	}
	if dv.has && dv.vm.State == vmreg.Shredded {
		return nil, fmt.Errorf("%s: VM %s was shredded: %w", n.relPath(), dv.vm.ID, syscall.EKEYREVOKED)
	}
	return dv.pol, nil
}

// checkCrossing refuses a rename or link between directories of
// different VMs, or between a VM and plain directories.
func (r *Root) checkCrossing(from, to *node) error {
	ffd, err := from.pathFd()
	if err != nil {
		return err
	}
	tfd, err := to.pathFd()
	if err != nil {
		return err
	}
	a, err := r.placeOf(from, ffd)
	if err != nil {
		return err
	}
	b, err := r.placeOf(to, tfd)
	if err != nil {
		return err
	}
	if a.domain() != b.domain() {
		return syscall.EXDEV
	}
	return nil
}

// requireAdmin refuses policy and key operations to every caller but root:
// they create, rewrap and destroy keys at the KMS. The roles file will
// refine who may (crypto-admin); until then only uid 0 may.
func (r *Root) requireAdmin(ctx context.Context, d *node, op string) error {
	caller, ok := fuse.FromContext(ctx)
	if ok && caller.Uid == 0 {
		return nil
	}
	args := []any{"dir", d.relPath(), "op", op}
	if ok {
		args = append(args, "uid", caller.Uid, "gid", caller.Gid, "pid", caller.Pid)
	}
	r.log.Warn("cryptds: refused a policy or key operation: only root may change policies or keys", args...)
	return fmt.Errorf("%s on %s: only root may: %w", op, d.relPath(), syscall.EPERM)
}

// keysText is the value of the virtual user.cryptds.keys xattr: the VM
// the directory belongs to and every KEK it had, one per line, so
// vm shred and key listings can say which backups need which key.
func (r *Root) keysText(d *node, dfd int) (string, error) {
	dv, err := r.dirVM(d, dfd)
	if err != nil {
		return "", err
	}
	if !dv.has {
		return "", syscall.ENODATA
	}
	v := dv.vm
	s := fmt.Sprintf("vm=%s dir=%s state=%s\n", v.ID, v.Dir, v.State)
	for _, k := range v.KEKs {
		state := "retired"
		switch {
		case !k.Destroyed.IsZero():
			state = "destroyed"
		case k.Until.IsZero():
			state = "current"
		}
		s += fmt.Sprintf("kek=%s state=%s since=%s", k.ID, state, stamp(k.Since))
		if !k.Until.IsZero() {
			s += " until=" + stamp(k.Until)
		}
		if !k.Destroyed.IsZero() {
			s += " destroyed=" + stamp(k.Destroyed)
		}
		s += "\n"
	}
	return s, nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
