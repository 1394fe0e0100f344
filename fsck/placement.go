package fsck

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
)

// Kinds of Finding about where objects and policies are: the attacks of a
// backing-store writer that the format alone cannot see (THREAT-MODEL.md).
const (
	KindPlainInVM      = "plain-in-vm"      // a plain object inside an encrypted VM: the mount refuses it
	KindForeignObject  = "foreign-object"   // an encrypted object outside its own VM: the mount refuses it
	KindPolicyVanished = "policy-vanished"  // a directory of a recorded encrypted VM lost its policy xattr
	KindPolicyCopied   = "policy-copied"    // a policy whose VM id belongs to another directory
	KindPolicyDiffers  = "policy-differs"   // a policy that is not the VM's recorded one (rolled back or replaced)
	KindRecordedGone   = "recorded-vm-gone" // the mount's record names a VM directory that does not exist
)

// place is what a directory is, as the walk found it.
type place struct {
	vm        objcrypt.VMID
	has       bool // belongs to a VM
	encrypted bool // objects here must be encrypted
	// reported: a policy problem of this directory is reported already
	// (corrupt, or missing on a VM directory), so its objects are not
	// reported again one by one.
	reported bool
}

// placement is the state of the placement checks of one run.
type placement struct {
	reg   *vmreg.Registry          // the mount's record (empty when not given)
	dirs  map[string]place         // by relative directory path
	roots map[objcrypt.VMID]string // first directory seen per VM id (no record)
	seen  map[objcrypt.VMID]bool   // recorded VMs whose directory was found
}

func newPlacement(vms []vmreg.VM) (*placement, error) {
	reg, _ := vmreg.Open("")
	for _, v := range vms {
		if err := reg.Put(v, false); err != nil {
			return nil, fmt.Errorf("VM record: %w", err)
		}
	}
	return &placement{reg: reg, dirs: map[string]place{}, roots: map[objcrypt.VMID]string{}, seen: map[objcrypt.VMID]bool{}}, nil
}

// slashRel is rel in the record's form ("." or a slash path).
func slashRel(rel string) string { return filepath.ToSlash(rel) }

// checkDirPlace decides what directory rel is and reports a vanished,
// copied or differing policy. pol is its parsed policy (nil: none or
// unparsable; the caller reports those).
func (c *checker) checkDirPlace(rel string, pol *objcrypt.Policy, hasPolicy bool) {
	pl := c.place
	key := slashRel(rel)
	if v, ok := pl.reg.Lookup(key); ok {
		pl.seen[v.ID] = true
		p := place{vm: v.ID, has: true, encrypted: v.State != vmreg.Decrypted}
		pl.dirs[key] = p
		if v.State != vmreg.Encrypted {
			return
		}
		switch {
		case !hasPolicy:
			c.add(rel, KindPolicyVanished, SeverityError, fmt.Sprintf(
				"this directory of encrypted VM %s (%s) has lost its policy xattr on the backing store; the mount still encrypts new files here from its record; 'cryptds vm rekey' through the mount writes it again", v.ID, v.Dir))
		case pol != nil && pol.VMID != v.ID:
			c.add(rel, KindPolicyCopied, SeverityError, fmt.Sprintf(
				"the policy here names VM %s, but this directory belongs to recorded VM %s (%s): copied from another VM; the mount ignores it", pol.VMID, v.ID, v.Dir))
		case pol != nil:
			if rp, err := v.ParsedPolicy(); err == nil && rp.KEKID != pol.KEKID {
				c.add(rel, KindPolicyDiffers, SeverityWarning, fmt.Sprintf(
					"the policy here names KEK %s, the mount's record KEK %s (rolled back or replaced on the backing store); the mount uses its record", pol.KEKID, rp.KEKID))
			}
		}
		return
	}
	if pol == nil {
		// A corrupt policy is reported by checkDir, a VM directory that
		// lost its policy by checkDir's policy-missing.
		pl.dirs[key] = place{reported: hasPolicy || filepath.Dir(rel) == "."}
		return
	}
	if v, ok := pl.reg.ByID(pol.VMID); ok {
		c.add(rel, KindPolicyCopied, SeverityError, fmt.Sprintf(
			"the policy here names VM %s, which the mount's record places at %s: a copied policy; the mount refuses this directory", pol.VMID, v.Dir))
		pl.dirs[key] = place{reported: true}
		return
	}
	if root, ok := pl.roots[pol.VMID]; ok && !under(key, root) {
		// Without the record either may be the original; the objects of
		// both are checked against the VM id.
		c.add(rel, KindPolicyCopied, SeverityError, fmt.Sprintf(
			"the policy here names VM %s, whose directory is %s: one of the two is a copy (the mount adopts whichever it sees first and refuses the other)", pol.VMID, root))
		pl.dirs[key] = place{vm: pol.VMID, has: true, encrypted: true}
		return
	}
	if _, ok := pl.roots[pol.VMID]; !ok {
		pl.roots[pol.VMID] = key
	}
	pl.dirs[key] = place{vm: pol.VMID, has: true, encrypted: true}
}

func under(dir, root string) bool {
	return root == "." || dir == root || strings.HasPrefix(dir, root+"/")
}

// checkFilePlace reports a plain object inside an encrypted VM, or an
// encrypted one (header h) outside its own VM.
func (c *checker) checkFilePlace(rel string, h *objcrypt.Header) {
	if c.opts.TempPrefix != "" && strings.HasPrefix(filepath.Base(rel), c.opts.TempPrefix) {
		return // a conversion copy: reported as a leftover
	}
	p := c.place.dirs[slashRel(filepath.Dir(rel))]
	if !p.has && p.reported {
		return
	}
	switch {
	case h == nil && p.encrypted:
		c.add(rel, KindPlainInVM, SeverityError, fmt.Sprintf(
			"a plain (unencrypted) object inside encrypted VM %s: planted, header stripped, or left by an unfinished 'vm encrypt'; the mount refuses it; run 'cryptds vm encrypt' through the mount to convert it, or remove it", p.vm))
	case h != nil && (!p.has || p.vm != h.VMID):
		where := "a plain directory"
		if p.has {
			where = "the directory of VM " + p.vm.String()
		}
		c.add(rel, KindForeignObject, SeverityError, fmt.Sprintf(
			"an encrypted object of VM %s in %s (copied or moved on the backing store): the mount refuses it; move it back, or copy it through the mount to re-encrypt it", h.VMID, where))
	}
}

// checkRecordedDirs reports recorded VMs whose directory was not found.
func (c *checker) checkRecordedDirs() {
	for _, v := range c.place.reg.All() {
		if c.place.seen[v.ID] || v.State == vmreg.Shredded {
			continue
		}
		c.add(v.Dir, KindRecordedGone, SeverityWarning, fmt.Sprintf(
			"the mount's record has encrypted VM %s here, but the directory is gone (removed or moved on the backing store, not through the mount)", v.ID))
	}
}
