// Package fsck checks a cryptds backing datastore offline: both header
// copies of every encrypted object agree, backing sizes follow the format,
// every stored block authenticates (when keys are given), directory
// policies parse, and no conversion left temporary files behind. It can put
// back header xattrs that an xattr-dropping copy (cp, rsync without -X)
// lost, from the in-file header copy, as an explicit admin act.
//
// It reads the backing store directly, so the datastore must not be mounted
// while it runs (the command line refuses); it never writes anything except
// restored header xattrs.
package fsck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
)

// Names of the backing xattrs of the format (docs/FORMAT.md §2, §4).
const (
	HeaderAttr = objcrypt.XattrHeader
	PolicyAttr = objcrypt.XattrPolicy
	ShrinkAttr = "user.cryptds.shrink" // §7.1: a truncate into a block in progress
)

// Sentinel errors a Keys implementation wraps so fsck can tell a key the
// KMS refuses for good (a shredded VM: its objects cannot be verified, which
// is not corruption) from a KMS that does not answer (the check is
// incomplete).
var (
	// ErrKeyGone: the KMS says the key is unknown, revoked or destroyed.
	ErrKeyGone = errors.New("key destroyed or revoked at the KMS")
	// ErrKeyUnavailable: the KMS could not be asked; retry later.
	ErrKeyUnavailable = errors.New("key server unavailable")
)

// Keys fetches KEKs. The caller owns and zeroes the returned key.
type Keys interface {
	KEK(ctx context.Context, id string) (objcrypt.Key, error)
}

// Severities of a Finding. Errors make the datastore "corrupt" (exit 5);
// warnings need attention but lose no data.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// Kinds of Finding; stable strings, part of the --json report.
const (
	KindHeaderCorrupt   = "header-corrupt"   // a header copy does not parse
	KindHeaderMismatch  = "header-mismatch"  // xattr and in-file copy differ
	KindXattrMissing    = "xattr-missing"    // in-file header but no xattr (restorable)
	KindXattrRestored   = "xattr-restored"   // --restore-xattrs put it back
	KindPolicyRestored  = "policy-restored"  // --restore-xattrs re-created a directory policy lost with the header xattrs
	KindSize            = "size"             // backing size not a valid ciphertext size
	KindBlockAuth       = "block-auth"       // a stored block fails authentication
	KindDEKUnwrap       = "dek-unwrap"       // the wrapped DEK does not open under its KEK
	KindKeyGone         = "key-gone"         // KEK destroyed or revoked: not verifiable
	KindKeyUnavailable  = "key-unavailable"  // KMS did not answer: not verified
	KindPolicyCorrupt   = "policy-corrupt"   // a directory policy does not parse
	KindPolicyMissing   = "policy-missing"   // a VM directory holds encrypted objects but has no policy
	KindLeftover        = "leftover"         // temp file of an interrupted conversion
	KindOrphanLeftover  = "orphan-leftover"  // temp file whose original is gone
	KindUnreadable      = "unreadable"       // an I/O error reading the backing store
	KindVersionTooNew   = "version-too-new"  // a header or policy of a newer format
	KindRestoreRefused  = "restore-refused"  // --restore-xattrs would overwrite a disagreeing xattr
	KindRegionMissing   = "region-missing"   // xattr present, backing file non-empty but shorter than the region
	KindTruncatePending = "truncate-pending" // a truncate the daemon died in; the mount finishes it at the next open
	KindWritesPending   = "writes-pending"   // block writes a killed daemon left in its write journal; the next mount finishes them
)

// Finding is one problem found, relative to the datastore root.
type Finding struct {
	Path     string `json:"path"`
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
	Detail   string `json:"detail"`
}

// Report is the outcome of Check; it is also the --json output.
type Report struct {
	Datastore        string    `json:"datastore"`
	Objects          int       `json:"objects"`           // regular files
	Encrypted        int       `json:"encrypted_objects"` // with a header
	Plain            int       `json:"plain_objects"`
	Policies         int       `json:"policies"`
	Verified         int       `json:"verified_objects"` // every block authenticated
	BlocksVerified   uint64    `json:"blocks_verified"`
	Restored         int       `json:"restored_xattrs"`
	PoliciesRestored int       `json:"restored_policies"`
	KeysChecked      bool      `json:"keys_checked"` // false: structure only (no KMS)
	Findings         []Finding `json:"findings"`
	// KeyErrors is the full error of each KEK that could not be used,
	// once per KEK: the findings of its objects refer to it by id
	// instead of repeating it on every line.
	KeyErrors map[string]string `json:"key_errors,omitempty"`
}

// Corrupt reports whether any finding is an error.
func (r *Report) Corrupt() bool {
	for _, f := range r.Findings {
		if f.Severity == SeverityError {
			return true
		}
	}
	return false
}

// Incomplete reports whether some objects could not be verified because
// the KMS did not answer.
func (r *Report) Incomplete() bool {
	for _, f := range r.Findings {
		if f.Kind == KindKeyUnavailable {
			return true
		}
	}
	return false
}

// Options tune Check. The zero value checks structure only.
type Options struct {
	// Keys, when set, lets Check authenticate every stored block.
	Keys Keys
	// RestoreXattrs re-creates missing header xattrs from the in-file copy.
	RestoreXattrs bool
	// TempPrefix starts the names of conversion copies (vmctl.TempPrefix);
	// empty disables the leftover check.
	TempPrefix string
	// PendingWrites is the number of block writes a killed daemon left in
	// the datastore's write journal (the caller reads it, package
	// journal): until a mount finishes them, the blocks they cover may
	// fail authentication, which the report says.
	PendingWrites int
	// VMs is the mount's record of this datastore's encrypted VMs (read by
	// the caller from the host's state directory, package vmreg). With it
	// the placement checks know which directories are encrypted VMs even
	// where the backing store lost or forged their policies.
	VMs []vmreg.VM
}

// checker is one run of Check.
type checker struct {
	ctx  context.Context
	root string
	opts Options
	rep  *Report
	// deks caches unwrapped DEKs by KEK id + VM id + wrapped DEK, so a VM
	// of many objects costs one KMS fetch and one unwrap; zeroed at the end.
	deks map[string]objcrypt.Key
	// keyErr remembers a KEK id that failed, so it is asked for once.
	keyErr map[string]error
	// restoredIn collects, per directory, the headers whose xattr this run
	// re-created: the copy that lost them lost the directory policy too.
	restoredIn map[string][]*objcrypt.Header
	// place holds the placement checks' state (placement.go).
	place *placement
}

// Check walks the backing datastore root and reports what it finds. The
// error is for failures that stop the check (the root is unreadable, ctx
// ends); problems with objects are Findings.
func Check(ctx context.Context, root string, opts Options) (*Report, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("datastore: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("datastore %s is not a directory", root)
	}
	c := &checker{ctx: ctx, root: root, opts: opts,
		rep:  &Report{Datastore: root, KeysChecked: opts.Keys != nil, Findings: []Finding{}},
		deks: map[string]objcrypt.Key{}, keyErr: map[string]error{}, restoredIn: map[string][]*objcrypt.Header{}}
	if c.place, err = newPlacement(opts.VMs); err != nil {
		return nil, err
	}
	defer func() {
		for _, k := range c.deks {
			k.Zero()
		}
	}()
	if opts.PendingWrites > 0 {
		c.add(".", KindWritesPending, SeverityWarning, fmt.Sprintf(
			"%d block writes a killed daemon left in flight are in the write journal: mount the datastore on this host to finish them; until then the blocks they cover may fail authentication", opts.PendingWrites))
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel := c.rel(p)
		if err != nil {
			c.add(rel, KindUnreadable, SeverityError, err.Error())
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			c.checkDir(p, rel)
		case d.Type().IsRegular():
			c.checkFile(p, rel, d.Name())
		}
		return nil
	})
	if err != nil {
		return c.rep, err
	}
	c.restorePolicies()
	c.checkRecordedDirs()
	for id, err := range c.keyErr {
		if c.rep.KeyErrors == nil {
			c.rep.KeyErrors = map[string]string{}
		}
		c.rep.KeyErrors[id] = err.Error()
	}
	sort.SliceStable(c.rep.Findings, func(i, j int) bool { return c.rep.Findings[i].Path < c.rep.Findings[j].Path })
	return c.rep, nil
}

func (c *checker) rel(p string) string {
	r, err := filepath.Rel(c.root, p)
	if err != nil {
		return p
	}
	return r
}

func (c *checker) add(path, kind, sev, detail string) {
	c.rep.Findings = append(c.rep.Findings, Finding{Path: path, Kind: kind, Severity: sev, Detail: detail})
}

// checkDir parses a directory's policy, and flags a VM directory (directly
// under the root) that holds encrypted objects but has no policy. Such a
// directory is not repaired: it is also what a half-done "vm decrypt"
// looks like, and re-creating a policy there would make new files
// encrypted against the admin's intent.
func (c *checker) checkDir(p, rel string) {
	raw, err := xattr.LGet(p, PolicyAttr)
	var pol *objcrypt.Policy
	var perr error
	if err == nil {
		pol, perr = objcrypt.ParsePolicy(raw)
	}
	c.checkDirPlace(rel, pol, err == nil)
	switch {
	case errors.Is(err, xattr.ENOATTR):
		if c.place.dirs[slashRel(rel)].has {
			return // a recorded VM: checkDirPlace reported the vanished policy
		}
		if filepath.Dir(rel) == "." && rel != "." && c.holdsEncrypted(p) {
			c.add(rel, KindPolicyMissing, SeverityWarning,
				"directory holds encrypted objects but has no encryption policy (a half-done 'vm decrypt', or the policy xattr was lost by a copy): new files here are stored in plaintext; run 'cryptds vm decrypt' or 'cryptds vm encrypt' on it through the mount")
		}
		return
	case err != nil:
		c.add(rel, KindUnreadable, SeverityError, fmt.Sprintf("read policy: %v", err))
		return
	}
	c.rep.Policies++
	if perr != nil {
		kind := KindPolicyCorrupt
		if errors.Is(perr, objcrypt.ErrVersion) {
			kind = KindVersionTooNew
		}
		c.add(rel, kind, SeverityError, fmt.Sprintf("policy: %v (new files in this directory are refused by the mount)", perr))
	}
}

// holdsEncrypted reports whether a directory has an encrypted object
// directly in it.
func (c *checker) holdsEncrypted(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if _, err := xattr.LGet(filepath.Join(dir, e.Name()), HeaderAttr); err == nil {
				return true
			}
		}
	}
	return false
}

// checkFile checks one regular file.
func (c *checker) checkFile(p, rel, name string) {
	c.rep.Objects++
	if c.opts.TempPrefix != "" {
		if orig, ok := strings.CutPrefix(name, c.opts.TempPrefix); ok {
			if _, err := os.Lstat(filepath.Join(filepath.Dir(p), orig)); err == nil {
				c.add(rel, KindLeftover, SeverityWarning,
					"temporary copy of an interrupted 'vm encrypt/decrypt/rekey --deep': run that command again to finish (it removes this file)")
			} else {
				c.add(rel, KindOrphanLeftover, SeverityWarning,
					"temporary conversion copy whose original "+orig+" is gone: it may be the only copy of the data; check it and rename or delete it by hand")
			}
		}
	}
	f, err := os.Open(p)
	if err != nil {
		c.add(rel, KindUnreadable, SeverityError, err.Error())
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.add(rel, KindUnreadable, SeverityError, err.Error())
		return
	}
	size := st.Size()
	raw, xerr := xattr.FGet(f, HeaderAttr)
	if xerr != nil && !errors.Is(xerr, xattr.ENOATTR) {
		c.add(rel, KindUnreadable, SeverityError, fmt.Sprintf("read header xattr: %v", xerr))
		return
	}
	hasXattr := xerr == nil

	var region []byte
	var rh *objcrypt.Header
	var rerr error
	if size >= objcrypt.HeaderRegionSize {
		region = make([]byte, objcrypt.HeaderRegionSize)
		if _, err := f.ReadAt(region, 0); err != nil {
			c.add(rel, KindUnreadable, SeverityError, fmt.Sprintf("read header region: %v", err))
			return
		}
		rh, rerr = objcrypt.ParseRegion(region)
	}

	if !hasXattr {
		if rh == nil {
			c.rep.Plain++ // a plain object
			c.checkFilePlace(rel, nil)
			return
		}
		c.rep.Encrypted++
		if !c.opts.RestoreXattrs {
			c.add(rel, KindXattrMissing, SeverityError,
				"the file starts with a cryptds header but has no "+HeaderAttr+" xattr (copied without xattrs?): the mount refuses it; restore it with 'cryptds fsck --restore-xattrs'")
			return
		}
		if !c.sizeOK(rel, size) {
			c.add(rel, KindRestoreRefused, SeverityError, "header xattr not restored: the backing size is not a valid ciphertext size")
			return
		}
		b, err := rh.MarshalBinary()
		if err == nil {
			// XATTR_CREATE: never overwrite one that appeared meanwhile.
			err = xattr.FSetWithFlags(f, HeaderAttr, b, xattr.XATTR_CREATE)
		}
		if err != nil {
			c.add(rel, KindRestoreRefused, SeverityError, fmt.Sprintf("restore header xattr: %v", err))
			return
		}
		c.rep.Restored++
		c.restoredIn[filepath.Dir(p)] = append(c.restoredIn[filepath.Dir(p)], rh)
		c.add(rel, KindXattrRestored, SeverityWarning, "header xattr re-created from the in-file header copy")
		c.verify(f, rel, rh, size)
		return
	}

	c.rep.Encrypted++
	xh, err := objcrypt.ParseHeader(raw)
	if err != nil {
		kind := KindHeaderCorrupt
		if errors.Is(err, objcrypt.ErrVersion) {
			kind = KindVersionTooNew
		}
		c.add(rel, kind, SeverityError, fmt.Sprintf("header xattr: %v", err))
		return
	}
	c.checkFilePlace(rel, xh)
	switch {
	case size == 0:
		// An empty object whose region is written on the first write.
		c.rep.Verified++
		return
	case size < objcrypt.HeaderRegionSize:
		c.add(rel, KindRegionMissing, SeverityError, fmt.Sprintf("backing file of %d bytes is shorter than the %d-byte header region", size, objcrypt.HeaderRegionSize))
		return
	case rerr != nil:
		c.add(rel, KindHeaderCorrupt, SeverityError, fmt.Sprintf("in-file header copy: %v", rerr))
		return
	case !xh.Equal(rh):
		detail := "the header xattr and the in-file header copy disagree"
		if xh.ObjectID == rh.ObjectID && xh.VMID == rh.VMID && xh.KEKID != rh.KEKID {
			detail += fmt.Sprintf(" (KEK %s vs %s: an interrupted shallow rekey? opening the file through the mount repairs it while both KEKs exist)", xh.KEKID, rh.KEKID)
		}
		c.add(rel, KindHeaderMismatch, SeverityError, detail)
		return
	}
	if _, err := xattr.FGet(f, ShrinkAttr); err == nil {
		// Until the mount finishes or forgets the truncate, the last
		// stored block may be the new one followed by the old one's tail.
		c.add(rel, KindTruncatePending, SeverityWarning,
			"a truncate was interrupted (the daemon died in it): the first open through the mount finishes or forgets it; blocks not verified")
		return
	}
	if !c.sizeOK(rel, size) {
		return
	}
	c.verify(f, rel, xh, size)
}

// sizeOK checks the backing size against the format (§7).
func (c *checker) sizeOK(rel string, size int64) bool {
	if _, err := objcrypt.PlainSizeFromCipher(uint64(size)); err != nil {
		c.add(rel, KindSize, SeverityError, fmt.Sprintf("backing size %d: %v", size, err))
		return false
	}
	return true
}

// dek returns the unwrapped DEK of h (cached; owned by the checker).
func (c *checker) dek(h *objcrypt.Header) (objcrypt.Key, error) {
	ck := h.KEKID + "\x00" + h.VMID.String() + "\x00" + string(h.WrappedDEK)
	if k, ok := c.deks[ck]; ok {
		return k, nil
	}
	if err, ok := c.keyErr[h.KEKID]; ok {
		return nil, err
	}
	kek, err := c.opts.Keys.KEK(c.ctx, h.KEKID)
	if err != nil {
		c.keyErr[h.KEKID] = err
		return nil, err
	}
	defer kek.Zero()
	dek, err := objcrypt.UnwrapDEK(kek, h.WrappedDEK, h.KEKID, h.VMID)
	if err != nil {
		return nil, err
	}
	c.deks[ck] = dek
	return dek, nil
}

// verifyChunk is how many stored blocks are read and checked at a time.
const verifyChunk = 256

// verify authenticates every stored block of an object whose header and
// size were checked.
func (c *checker) verify(f *os.File, rel string, h *objcrypt.Header, size int64) {
	if c.opts.Keys == nil {
		return
	}
	dek, err := c.dek(h)
	switch {
	case errors.Is(err, ErrKeyGone):
		c.add(rel, KindKeyGone, SeverityWarning, fmt.Sprintf("KEK %s is destroyed or revoked at the KMS: the object is unreadable (a shredded VM?) and was not verified", h.KEKID))
		return
	case errors.Is(err, objcrypt.ErrAuth):
		c.add(rel, KindDEKUnwrap, SeverityError, fmt.Sprintf("the wrapped DEK does not open under KEK %s: %v", h.KEKID, err))
		return
	case err != nil:
		c.add(rel, KindKeyUnavailable, SeverityWarning, fmt.Sprintf("KEK %s could not be fetched; blocks not verified", h.KEKID))
		return
	}
	obj, err := objcrypt.NewObject(dek, h.ObjectID, nil)
	if err != nil {
		c.add(rel, KindDEKUnwrap, SeverityError, err.Error())
		return
	}
	buf := make([]byte, verifyChunk*objcrypt.CipherBlockSize)
	var plain []byte
	var blk uint64
	bad := 0
	for off := int64(objcrypt.HeaderRegionSize); off < size; {
		if c.ctx.Err() != nil {
			return
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			c.add(rel, KindUnreadable, SeverityError, fmt.Sprintf("read at %d: %v", off, err))
			return
		}
		stored := buf[:n]
		// Decrypt block by block so one bad block does not hide the rest.
		for len(stored) > 0 {
			l := min(len(stored), objcrypt.CipherBlockSize)
			var err error
			plain, err = obj.DecryptBlock(plain[:0], stored[:l], blk)
			if err != nil {
				bad++
				if bad <= 10 {
					c.add(rel, KindBlockAuth, SeverityError, fmt.Sprintf("block %d (backing offset %d) fails authentication", blk, objcrypt.CipherOffsetOfBlock(blk)))
				}
			}
			c.rep.BlocksVerified++
			stored = stored[l:]
			blk++
		}
		off += n
	}
	clear(plain)
	if bad > 10 {
		c.add(rel, KindBlockAuth, SeverityError, fmt.Sprintf("%d blocks in all fail authentication", bad))
	}
	if bad == 0 {
		c.rep.Verified++
	}
}

// restorePolicies re-creates the policy of each directory in which this run
// restored header xattrs and which has no policy: an xattr-dropping copy
// loses the directory's policy with the headers, and without it the next
// file the VM writes there would be stored in plaintext. The policy is
// rebuilt from the headers (VM id, KEK id and wrapped DEK are the
// authenticated part of a policy), only when every restored header of the
// directory agrees. A directory whose objects kept their xattrs (a
// half-done "vm decrypt") is never touched.
func (c *checker) restorePolicies() {
	dirs := make([]string, 0, len(c.restoredIn))
	for d := range c.restoredIn {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, dir := range dirs {
		hs := c.restoredIn[dir]
		rel := c.rel(dir)
		if _, err := xattr.LGet(dir, PolicyAttr); !errors.Is(err, xattr.ENOATTR) {
			continue // a policy is there (or unreadable, reported by checkDir)
		}
		first := hs[0]
		agree := true
		for _, h := range hs[1:] {
			if h.VMID != first.VMID || h.KEKID != first.KEKID || !bytes.Equal(h.WrappedDEK, first.WrappedDEK) {
				agree = false
				break
			}
		}
		if !agree {
			c.add(rel, KindPolicyMissing, SeverityWarning,
				"the directory policy was lost with the header xattrs, but its objects name different keys: not re-created; new files here are stored in plaintext until 'cryptds vm encrypt' is run on it through the mount")
			continue
		}
		pol := &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: first.VMID, KEKID: first.KEKID,
			WrappedDEK: bytes.Clone(first.WrappedDEK), Created: time.Now().UTC()}
		b, err := pol.MarshalBinary()
		if err == nil {
			err = xattr.LSetWithFlags(dir, PolicyAttr, b, xattr.XATTR_CREATE)
		}
		if err != nil {
			c.add(rel, KindRestoreRefused, SeverityError, fmt.Sprintf("re-create the directory policy: %v", err))
			continue
		}
		c.rep.PoliciesRestored++
		c.add(rel, KindPolicyRestored, SeverityWarning,
			fmt.Sprintf("directory policy re-created from the restored headers (KEK %s, VM %s)", first.KEKID, first.VMID))
	}
}
