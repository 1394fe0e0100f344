package vmctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/objcrypt"
)

// Names of the xattrs of the fs contract.
const (
	// PolicyAttr is the VM directory's policy, read and set through the
	// mount: "none" or "encrypted kek=<id> vm=<vmid>"; setting "encrypted"
	// creates the VM's keys.
	PolicyAttr = objcrypt.XattrPolicy
	// HeaderAttr is the backing file's object header; its presence alone
	// makes an object encrypted. Hidden from and read-only through the
	// mount, so it is read from the backing store.
	HeaderAttr = objcrypt.XattrHeader
	// KeyStateAttr is a VM directory's key state, read-only through the
	// mount, which asks the KMS: "<state> kek=<id> kms=<endpoint>", or
	// "none kms=<endpoints>" without a policy.
	KeyStateAttr = "user.cryptds.keystate"
)

// States of a VM as List and Status report them.
const (
	StateEncrypted  = "encrypted"  // policy set, every object encrypted
	StatePlain      = "plain"      // no policy, every object plain
	StateMixed      = "mixed"      // policy and objects disagree: a conversion is needed
	StateConverting = "converting" // leftovers of an interrupted conversion exist
	StateShredded   = "shredded"   // policy set, but its key is destroyed: the data is unreadable for good
)

// Key states as the mount reports them in KeyStateAttr.
const (
	KeyActive      = "active"
	KeyShredded    = "shredded"
	KeyUnreachable = "unreachable"
)

// Options tune Encrypt and Decrypt. The zero value is the safe default.
type Options struct {
	// Force converts even when processes hold objects of the VM open for
	// writing. Only for false positives of that check: writes to an object
	// after it was copied would be lost, and an object that changes while
	// it is copied still fails with ErrChanged.
	Force bool
	// Progress, when set, is called after every chunk copied (about 1 MiB),
	// from the converting goroutine; it must be quick. Bytes never exceed
	// TotalBytes.
	Progress func(Progress)

	// testHook is the unit tests' crash seam; see objConv.hook.
	testHook func(stage string, done int64) error
}

// Progress is a snapshot of a running conversion.
type Progress struct {
	Object       string // path through the mount of the object being copied
	Objects      int    // objects finished
	TotalObjects int    // objects to convert
	Bytes        int64  // data bytes processed so far
	// TotalBytes is estimated up front from the allocated size of the
	// objects (holes are not copied), so a sparse 64 GiB image counts as the
	// data it holds.
	TotalBytes int64
}

// Report says what a conversion did.
type Report struct {
	VM               string        `json:"vm"`
	PolicySet        bool          `json:"policy_changed"` // this run set (or removed) the policy
	KEKID            string        `json:"kek_id,omitempty"`
	Converted        int           `json:"converted"`         // objects rewritten
	AlreadyDone      int           `json:"already_done"`      // objects that were already in the target state
	Size             int64         `json:"size"`              // plaintext size of the objects converted (the same for encrypt and decrypt)
	Bytes            int64         `json:"bytes"`             // data bytes copied (holes excluded)
	RemovedLeftovers []string      `json:"removed_leftovers"` // temp files of an interrupted run, removed
	Duration         time.Duration `json:"duration_ns"`
}

// VMInfo is one row of List.
type VMInfo struct {
	Name   string `json:"name"`
	State  string `json:"state"`  // one of the State constants
	Policy string `json:"policy"` // "encrypted" or "none"
	KEKID  string `json:"kek_id,omitempty"`
	// KeyState is what the KMS says of KEKID now: active, shredded,
	// unreachable, refused or unknown; empty without a policy or with a
	// mount too old to say.
	KeyState string `json:"key_state,omitempty"`
	// KMS is the endpoint that serves KEKID now (or the endpoints tried
	// when none answered); the address the policy recorded at creation
	// when the mount cannot say.
	KMS       string `json:"kms,omitempty"`
	Objects   int    `json:"objects"`
	Encrypted int    `json:"encrypted_objects"`
	Plain     int    `json:"plain_objects"`
	Leftovers int    `json:"leftovers"`
	Size      int64  `json:"size"` // plaintext bytes (apparent size, holes included)
}

// ObjectStatus is one object of a VM in Status.
type ObjectStatus struct {
	Path      string `json:"path"` // relative to the VM directory
	Encrypted bool   `json:"encrypted"`
	KEKID     string `json:"kek_id,omitempty"`
	Size      int64  `json:"size"`                      // plaintext bytes
	Allocated int64  `json:"allocated"`                 // bytes allocated on the backing store
	Problem   string `json:"problem,omitempty"`         // unreadable header, ...
	Links     uint64 `json:"links,omitempty"`           // set when > 1 (conversion refuses it)
	Leftover  bool   `json:"leftover,omitempty"`        // an interrupted conversion's temp file
	Orphan    bool   `json:"orphan_leftover,omitempty"` // a temp file whose original is gone
}

// VMStatus is one VM in detail.
type VMStatus struct {
	VMInfo
	Path    string         `json:"path"`    // the VM directory through the mount
	Backing string         `json:"backing"` // the VM directory in the backing store
	VMID    string         `json:"vm_id,omitempty"`
	Files   []ObjectStatus `json:"files"`
}

// Encrypt sets the encryption policy of the VM directory vmPath (directly
// under a cryptds mount root) and converts each plain object to an encrypted
// one. A run on a half-converted VM removes the leftovers and finishes the
// job. It returns ErrAlreadyEncrypted when there is nothing to do.
func Encrypt(ctx context.Context, vmPath string, opts Options) (Report, error) {
	return convertVM(ctx, vmPath, opts, true)
}

// Decrypt removes the policy of the VM directory vmPath and converts each
// encrypted object back to plain. It returns ErrNotEncrypted when there is
// nothing to do.
func Decrypt(ctx context.Context, vmPath string, opts Options) (Report, error) {
	return convertVM(ctx, vmPath, opts, false)
}

// List reports every VM directory under the root of a cryptds mount. Hidden
// directories and lost+found are not VMs.
func List(mountRoot string) ([]VMInfo, error) {
	point, backing, err := resolveMount(mountRoot)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(point)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", point, err)
	}
	var out []VMInfo
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") || e.Name() == "lost+found" {
			continue
		}
		v := &vmDir{name: e.Name(), path: filepath.Join(point, e.Name()), mount: point, backing: filepath.Join(backing, e.Name())}
		st, err := v.status()
		if err != nil {
			return nil, err
		}
		out = append(out, st.VMInfo)
	}
	return out, nil
}

// Status reports one VM and each of its objects.
func Status(vmPath string) (VMStatus, error) {
	v, err := resolveVM(vmPath)
	if err != nil {
		return VMStatus{}, err
	}
	return v.status()
}

// policyState is the parsed policy virtual xattr.
type policyState struct {
	encrypted      bool
	kek, vmid, kms string
}

// parsePolicyValue parses "none" or "encrypted key=value...".
func parsePolicyValue(s string) (policyState, error) {
	f := strings.Fields(strings.TrimRight(s, "\x00\n"))
	if len(f) == 0 {
		return policyState{}, fmt.Errorf("empty policy value")
	}
	switch f[0] {
	case "none":
		return policyState{}, nil
	case "encrypted":
	default:
		return policyState{}, fmt.Errorf("unknown policy value %q", s)
	}
	p := policyState{encrypted: true}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "kek":
			p.kek = v
		case "vm":
			p.vmid = v
		case "kms":
			p.kms = v
		}
	}
	return p, nil
}

// policy reads the VM's policy through the mount. The KMS, when the mount
// does not say it, comes from the policy record in the backing directory.
func (v *vmDir) policy() (policyState, error) {
	b, err := xattr.Get(v.path, PolicyAttr)
	if err != nil {
		return policyState{}, fmt.Errorf("read %s of %s (is the mount a cryptds mount of this version?): %w", PolicyAttr, v.path, err)
	}
	p, err := parsePolicyValue(string(b))
	if err != nil {
		return policyState{}, fmt.Errorf("%s: %w", v.path, err)
	}
	if p.encrypted && (p.kms == "" || p.kek == "" || p.vmid == "") {
		if raw, err := xattr.Get(v.backing, PolicyAttr); err == nil {
			if rec, err := objcrypt.ParsePolicy(raw); err == nil {
				p.kms = cmpOr(p.kms, rec.KMS)
				p.kek = cmpOr(p.kek, rec.KEKID)
				p.vmid = cmpOr(p.vmid, rec.VMID.String())
			}
		}
	}
	return p, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// keyState reads KeyStateAttr through the mount: the state ("" when the
// mount does not offer it) and the KMS endpoint(s).
func (v *vmDir) keyState() (state, kms string) {
	buf := make([]byte, 1024) // one call: each read asks the KMS
	n, err := unix.Getxattr(v.path, KeyStateAttr, buf)
	if err != nil {
		return "", ""
	}
	f := strings.Fields(string(buf[:n]))
	if len(f) == 0 {
		return "", ""
	}
	for _, kv := range f[1:] {
		if e, ok := strings.CutPrefix(kv, "kms="); ok {
			kms = e
		}
	}
	return f[0], kms
}

// kmsNote names the KMS endpoints the mount uses, for an ENOKEY message.
func (v *vmDir) kmsNote() string {
	if _, kms := v.keyState(); kms != "" {
		return "KMS endpoints: " + kms + "; "
	}
	return ""
}

// setPolicy asks the filesystem to create (value "encrypted") or remove
// ("none") the VM's policy.
func (v *vmDir) setPolicy(value string) error {
	err := xattr.Set(v.path, PolicyAttr, []byte(value))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if errors.Is(err, unix.ENOKEY) {
		return fmt.Errorf("set %s=%s on %s: %w (%snothing was changed; check the KMS and the mount's log): %w", PolicyAttr, value, v.path, ErrKMS, v.kmsNote(), err)
	}
	if err != nil {
		return fmt.Errorf("set %s=%s on %s (the key server must be reachable from the mount): %w", PolicyAttr, value, v.path, err)
	}
	return nil
}

// object is one regular file of a VM, seen through the mount and in the
// backing store.
type object struct {
	rel       string
	path      string // through the mount
	backing   string
	size      int64 // plaintext
	alloc     int64 // on the backing store
	nlink     uint64
	encrypted bool
	kek       string
	problem   string
}

// inventory is what a walk of a VM found.
type inventory struct {
	objects   []object
	leftovers []string // temp files with their original present (paths through the mount)
	orphans   []string // temp files without their original
}

// headerState reads the backing file's header xattr.
func headerState(backing string) (encrypted bool, kek, problem string, err error) {
	raw, err := xattr.LGet(backing, HeaderAttr)
	if errors.Is(err, xattr.ENOATTR) {
		return false, "", "", nil
	}
	if err != nil {
		return false, "", "", fmt.Errorf("read header of %s: %w", backing, err)
	}
	h, err := objcrypt.ParseHeader(raw)
	if err != nil {
		return true, "", fmt.Sprintf("unreadable header: %v", err), nil
	}
	return true, h.KEKID, "", nil
}

// scan walks the VM through the mount.
func (v *vmDir) scan() (*inventory, error) {
	inv := &inventory{}
	err := filepath.WalkDir(v.path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(v.path, p)
		if err != nil {
			return err
		}
		if orig, ok := strings.CutPrefix(d.Name(), TempPrefix); ok {
			if _, err := os.Lstat(filepath.Join(filepath.Dir(p), orig)); err == nil {
				inv.leftovers = append(inv.leftovers, p)
			} else {
				inv.orphans = append(inv.orphans, p)
			}
			return nil
		}
		o := object{rel: rel, path: p, backing: filepath.Join(v.backing, rel)}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		o.size = fi.Size()
		var st unix.Stat_t
		if err := unix.Lstat(o.backing, &st); err != nil {
			return fmt.Errorf("backing object %s of %s: %w", o.backing, p, err)
		}
		o.alloc, o.nlink = st.Blocks*512, uint64(st.Nlink)
		if o.encrypted, o.kek, o.problem, err = headerState(o.backing); err != nil {
			return err
		}
		inv.objects = append(inv.objects, o)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan VM %s: %w", v.path, err)
	}
	return inv, nil
}

// vmState names the state of a VM from its policy and objects.
func vmState(p policyState, enc, plain, leftovers int) string {
	switch {
	case leftovers > 0:
		return StateConverting
	case enc > 0 && plain > 0, p.encrypted && plain > 0, !p.encrypted && enc > 0:
		return StateMixed
	case p.encrypted:
		return StateEncrypted
	default:
		return StatePlain
	}
}

func (v *vmDir) status() (VMStatus, error) {
	p, err := v.policy()
	if err != nil {
		return VMStatus{}, err
	}
	inv, err := v.scan()
	if err != nil {
		return VMStatus{}, err
	}
	s := VMStatus{Path: v.path, Backing: v.backing, VMID: p.vmid}
	s.Name, s.KEKID, s.KMS, s.Policy = v.name, p.kek, p.kms, "none"
	if p.encrypted {
		s.Policy = "encrypted"
		if state, kms := v.keyState(); state != "" && state != "none" {
			s.KeyState, s.KMS = state, kms
		}
	}
	for _, o := range inv.objects {
		s.Objects++
		s.Size += o.size
		if o.encrypted {
			s.Encrypted++
		} else {
			s.Plain++
		}
		fs := ObjectStatus{Path: o.rel, Encrypted: o.encrypted, KEKID: o.kek, Size: o.size, Allocated: o.alloc, Problem: o.problem}
		if o.nlink > 1 {
			fs.Links = o.nlink
		}
		s.Files = append(s.Files, fs)
	}
	for _, l := range append(inv.leftovers, inv.orphans...) {
		rel, _ := filepath.Rel(v.path, l)
		s.Files = append(s.Files, ObjectStatus{Path: rel, Leftover: true, Orphan: !slices.Contains(inv.leftovers, l)})
	}
	sort.Slice(s.Files, func(i, j int) bool { return s.Files[i].Path < s.Files[j].Path })
	s.Leftovers = len(inv.leftovers) + len(inv.orphans)
	s.State = vmState(p, s.Encrypted, s.Plain, s.Leftovers)
	if s.KeyState == KeyShredded && s.State == StateEncrypted {
		s.State = StateShredded
	}
	return s, nil
}
