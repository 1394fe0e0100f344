package vmctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/objcrypt"
)

// ErrKMS means the mount could not reach the key server for a key
// operation (rekey, shred); nothing was changed.
var ErrKMS = errors.New("the mount could not reach the key server")

// RekeyReport says what Rekey, RekeyDeep or Shred did.
type RekeyReport struct {
	VM   string `json:"vm"`
	Mode string `json:"mode"` // "shallow", "deep" or "shred"
	// KEKID is the VM's KEK afterwards (empty after a shred).
	KEKID string `json:"kek_id,omitempty"`
	// OldKEKs are the KEK ids the VM's policy and objects named before.
	// After a shallow or deep rekey the VM no longer uses them, but every
	// ciphertext backup taken before still does (destroy them only once
	// those backups expire); after a shred they have been destroyed.
	OldKEKs []string `json:"old_kek_ids"`
	// Objects is the number of encrypted objects now under KEKID (shallow,
	// deep) or made unreadable (shred).
	Objects int `json:"objects"`
	// Converted, Bytes and RemovedLeftovers: as Report, for a deep rekey.
	Converted        int           `json:"converted"`
	Bytes            int64         `json:"bytes"`
	RemovedLeftovers []string      `json:"removed_leftovers"`
	Resumed          bool          `json:"resumed"` // a deep rekey finished an interrupted one
	Duration         time.Duration `json:"duration_ns"`
	// Destroyed lists, after a shred, every KEK of the VM the mount
	// destroyed, with the time it was in use: each kills every copy of
	// the VM's data encrypted under it, ciphertext backups included.
	Destroyed []KEKInfo `json:"destroyed,omitempty"`
}

// setKeyOp asks the filesystem for a key operation on the VM directory
// and maps its errno to this package's sentinels.
func (v *vmDir) setKeyOp(value string) error {
	err := xattr.Set(v.path, PolicyAttr, []byte(value))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOKEY):
		return fmt.Errorf("%s: %s: %w (%snothing was changed; check the KMS and the mount's log): %w", v.path, value, ErrKMS, v.kmsNote(), err)
	case errors.Is(err, unix.ENODATA):
		return fmt.Errorf("%s: %s: %w", v.path, value, ErrNotEncrypted)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: the mount does not support %q (a cryptds mount of an older version, or a key source that cannot destroy keys): %w", v.path, value, err)
	}
	return fmt.Errorf("%s: %s failed (details in the mount's log): %w", v.path, value, err)
}

// policyRecord reads the VM's policy record from the backing store.
func (v *vmDir) policyRecord() (*objcrypt.Policy, error) {
	raw, err := xattr.Get(v.backing, PolicyAttr)
	if err != nil {
		return nil, fmt.Errorf("read policy record of %s: %w", v.backing, err)
	}
	return objcrypt.ParsePolicy(raw)
}

// backingHeader reads the header xattr of a backing object and, when the
// file is long enough, checks the in-file copy agrees.
func backingHeader(path string) (*objcrypt.Header, error) {
	raw, err := xattr.LGet(path, HeaderAttr)
	if err != nil {
		return nil, err
	}
	h, err := objcrypt.ParseHeader(raw)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	region := make([]byte, objcrypt.HeaderRegionSize)
	if n, _ := f.ReadAt(region, 0); n < len(region) {
		return h, nil // empty object: no region yet
	}
	rh, err := objcrypt.ParseRegion(region)
	if err != nil {
		return nil, fmt.Errorf("in-file header: %w", err)
	}
	if !h.Equal(rh) {
		return nil, fmt.Errorf("header xattr and in-file header disagree: %w", objcrypt.ErrHeader)
	}
	return h, nil
}

// kekSet collects the KEK ids of the policy and the encrypted objects.
func kekSet(pol policyState, inv *inventory) []string {
	m := map[string]bool{}
	if pol.kek != "" {
		m[pol.kek] = true
	}
	for _, o := range inv.objects {
		if o.kek != "" {
			m[o.kek] = true
		}
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// encryptedVM resolves, locks and inventories an encrypted VM for a key
// operation. The caller runs unlock.
func encryptedVM(vmPath string) (v *vmDir, pol policyState, inv *inventory, unlock func(), err error) {
	if v, err = resolveVM(vmPath); err != nil {
		return nil, pol, nil, nil, err
	}
	if unlock, err = lockVM(v); err != nil {
		return nil, pol, nil, nil, err
	}
	fail := func(e error) (*vmDir, policyState, *inventory, func(), error) {
		unlock()
		return nil, pol, nil, nil, e
	}
	if pol, err = v.policy(); err != nil {
		return fail(err)
	}
	if !pol.encrypted {
		return fail(fmt.Errorf("%s: %w (no policy)", v.path, ErrNotEncrypted))
	}
	if inv, err = v.scan(); err != nil {
		return fail(err)
	}
	return v, pol, inv, unlock, nil
}

// Rekey does a shallow rekey of an encrypted VM: the mount creates a new
// KEK, re-wraps the VM's DEK under it and rewrites the policy and every
// object header in place; no data is copied, and it is allowed while the
// VM runs (open handles keep their object keys). Afterwards every header
// in the backing store is checked to name the new KEK with both copies
// equal. The old KEK ids are reported: destroy them in the KMS once the
// rekey succeeded.
func Rekey(ctx context.Context, vmPath string) (RekeyReport, error) {
	start := time.Now()
	v, pol, inv, unlock, err := encryptedVM(vmPath)
	if err != nil {
		return RekeyReport{}, err
	}
	defer unlock()
	rep := RekeyReport{VM: v.path, Mode: "shallow", OldKEKs: kekSet(pol, inv), RemovedLeftovers: []string{}}
	if err := v.setKeyOp("rekey"); err != nil {
		return rep, err
	}
	rec, err := v.policyRecord()
	if err != nil {
		return rep, err
	}
	rep.KEKID = rec.KEKID
	after, err := v.scan()
	if err != nil {
		return rep, err
	}
	var bad []string
	for _, o := range after.objects {
		if !o.encrypted {
			continue
		}
		h, err := backingHeader(o.backing)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s (%v)", o.rel, err))
		case h.KEKID != rec.KEKID:
			bad = append(bad, fmt.Sprintf("%s (still under KEK %s)", o.rel, h.KEKID))
		default:
			rep.Objects++
		}
	}
	rep.Duration = time.Since(start)
	if len(bad) > 0 {
		return rep, fmt.Errorf("%s: rekey left %d objects not under the new KEK %s: %s; run it again before destroying the old KEKs",
			v.path, len(bad), rec.KEKID, strings.Join(bad, ", "))
	}
	return rep, nil
}

// RekeyDeep gives an encrypted VM a new KEK and a new DEK and re-encrypts
// every object by copy and rename (as Encrypt does), so no ciphertext under
// the old DEK remains. The VM must be off: it refuses while objects are
// open for writing unless opts.Force. When some objects already differ
// from the policy (an interrupted deep rekey), it finishes that one instead
// of starting another.
func RekeyDeep(ctx context.Context, vmPath string, opts Options) (RekeyReport, error) {
	start := time.Now()
	v, pol, inv, unlock, err := encryptedVM(vmPath)
	if err != nil {
		return RekeyReport{}, err
	}
	defer unlock()
	rep := RekeyReport{VM: v.path, Mode: "deep", OldKEKs: kekSet(pol, inv), RemovedLeftovers: []string{}}
	if err := v.refuseUnsafeCopy(inv.objects, inv.orphans, opts.Force); err != nil {
		return rep, err
	}
	rec, err := v.policyRecord()
	if err != nil {
		return rep, err
	}
	stale := staleObjects(inv, rec)
	rep.Resumed = len(stale) > 0 || len(inv.leftovers) > 0
	if !rep.Resumed {
		if err := checkSpace(v.backing, inv.objects, false); err != nil {
			return rep, err
		}
		if err := v.setKeyOp("rekey-deep"); err != nil {
			return rep, err
		}
		if rec, err = v.policyRecord(); err != nil {
			return rep, err
		}
		stale = staleObjects(inv, rec)
	} else if err := checkSpace(v.backing, stale, false); err != nil {
		return rep, err
	}
	rep.KEKID = rec.KEKID
	for _, l := range inv.leftovers {
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("remove leftover %s: %w", l, err)
		}
		rep.RemovedLeftovers = append(rep.RemovedLeftovers, l)
	}
	verify := func(tmpBacking string) error {
		h, err := backingHeader(tmpBacking)
		if err != nil {
			return fmt.Errorf("%s: %w (%v)", tmpBacking, ErrPolicyNotApplied, err)
		}
		if !matchesPolicy(h, rec) {
			return fmt.Errorf("%s: %w (copy under KEK %s, policy %s; does the policy reach %s?)", tmpBacking, ErrPolicyNotApplied, h.KEKID, rec.KEKID, filepath.Dir(tmpBacking))
		}
		return nil
	}
	var crep Report
	err = v.convertAll(ctx, stale, opts, verify, false, &crep)
	rep.Converted, rep.Bytes = crep.Converted, crep.Bytes
	rep.Objects = len(inv.objects) - len(stale) + crep.Converted
	rep.Duration = time.Since(start)
	return rep, err
}

// matchesPolicy reports whether an object was written under the policy's
// key: same KEK and the very wrapped DEK (new objects copy it).
func matchesPolicy(h *objcrypt.Header, rec *objcrypt.Policy) bool {
	return h.VMID == rec.VMID && h.KEKID == rec.KEKID && bytes.Equal(h.WrappedDEK, rec.WrappedDEK)
}

// staleObjects are the objects a deep rekey still has to copy: plain ones
// and those whose header is not the policy's key.
func staleObjects(inv *inventory, rec *objcrypt.Policy) []object {
	var out []object
	for _, o := range inv.objects {
		if !o.encrypted {
			out = append(out, o)
			continue
		}
		h, err := backingHeader(o.backing)
		if err != nil || !matchesPolicy(h, rec) {
			out = append(out, o)
		}
	}
	return out
}

// Shred revokes and destroys, through the mount, every KEK the VM's
// policy and objects name, and makes the mount forget them at once.
// Afterwards the VM's objects can never be read again; they and the
// policy stay on disk (remove the directory to reclaim the space).
func Shred(ctx context.Context, vmPath string) (RekeyReport, error) {
	start := time.Now()
	v, err := resolveVM(vmPath)
	if err != nil {
		return RekeyReport{}, err
	}
	unlock, err := lockVM(v)
	if err != nil {
		return RekeyReport{}, err
	}
	defer unlock()
	pol, err := v.policy()
	if err != nil {
		return RekeyReport{}, err
	}
	inv, err := v.scan()
	if err != nil {
		return RekeyReport{}, err
	}
	rep := RekeyReport{VM: v.path, Mode: "shred", OldKEKs: kekSet(pol, inv), RemovedLeftovers: []string{}}
	for _, o := range inv.objects {
		if o.encrypted {
			rep.Objects++
		}
	}
	if len(rep.OldKEKs) == 0 {
		return rep, fmt.Errorf("%s: %w (no policy and no encrypted object: nothing to shred)", v.path, ErrNotEncrypted)
	}
	err = v.setKeyOp("shred")
	rep.Duration = time.Since(start)
	if keys, kerr := vmKeys(v.path); kerr == nil {
		for _, k := range keys {
			if k.State == "destroyed" {
				rep.Destroyed = append(rep.Destroyed, k)
			}
		}
	}
	return rep, err
}
