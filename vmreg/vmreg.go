// Package vmreg is a mount's own record of the encrypted VMs of one
// datastore: which directory each VM id belongs to, its current policy,
// every KEK it ever had, and whether it is encrypted, decrypted or
// shredded.
//
// The record lives in the host's state directory, never on the backing
// store, because the backing store is the attacker: a policy xattr there
// can be deleted (new files would be written in plaintext), copied onto
// another directory (a shred there would destroy the other VM's keys) or
// rolled back to an older KEK. With the record the mount knows that a
// directory is encrypted even when its policy is gone, which directory a
// VM id belongs to, and which KEKs a shred may destroy.
//
// The record is small (one entry per VM) and rewritten whole on every
// change: write to a temporary file, fsync, rename, fsync the directory,
// so a crash leaves the old or the new record, never a torn one.
package vmreg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
)

// State is what a VM directory is now.
type State string

// States of a recorded VM.
const (
	// Encrypted: every object in the VM's directory tree must be
	// encrypted under this VM id; plain objects there are refused.
	Encrypted State = "encrypted"
	// Decrypted: the policy was removed through the mount; new files are
	// plain and the VM's own remaining encrypted objects are still served.
	Decrypted State = "decrypted"
	// Shredded: the VM's KEKs were destroyed; nothing is served or created.
	Shredded State = "shredded"
)

// Sentinel errors callers branch on.
var (
	// ErrCorrupt: the record file does not parse or fails validation.
	ErrCorrupt = errors.New("vmreg: record corrupt")
	// ErrConflict: the VM id is recorded for another directory.
	ErrConflict = errors.New("vmreg: VM id recorded for another directory")
)

// KEK is one key-encryption key a VM had.
type KEK struct {
	ID string `json:"id"`
	// Since is when the KEK became the VM's current one (created or
	// first seen); Until when a rekey replaced it (zero: still current).
	Since time.Time `json:"since"`
	Until time.Time `json:"until,omitzero"`
	// Destroyed is when a shred destroyed it at the KMS (zero: not).
	Destroyed time.Time `json:"destroyed,omitzero"`
}

// VM is one recorded encrypted VM.
type VM struct {
	ID objcrypt.VMID `json:"vm_id"`
	// Dir is the VM's root directory relative to the mount root ("." for
	// the root itself), slash separated, cleaned.
	Dir   string `json:"dir"`
	State State  `json:"state"`
	// Policy is the canonical policy record new objects are created from
	// (objcrypt.Policy JSON), the one this mount last stored.
	Policy json.RawMessage `json:"policy"`
	KEKs   []KEK           `json:"keks"`
	// Adopted marks a VM whose policy this mount found on the backing
	// store (made before the record existed, or restored from a backup)
	// rather than created itself.
	Adopted bool `json:"adopted,omitempty"`
}

// ParsedPolicy decodes the VM's policy record.
func (v *VM) ParsedPolicy() (*objcrypt.Policy, error) {
	p, err := objcrypt.ParsePolicy(v.Policy)
	if err != nil {
		return nil, fmt.Errorf("recorded policy of VM %s: %w", v.ID, err)
	}
	return p, nil
}

// HasKEK reports whether id is one of the VM's recorded KEKs.
func (v *VM) HasKEK(id string) bool {
	return slices.ContainsFunc(v.KEKs, func(k KEK) bool { return k.ID == id })
}

func (v *VM) clone() VM {
	c := *v
	c.Policy = bytes.Clone(v.Policy)
	c.KEKs = slices.Clone(v.KEKs)
	return c
}

// recordVersion is the record file's format version.
const recordVersion = 1

// maxRecordSize bounds what Open reads (a record of 10,000 VMs with a few
// KEKs each is about 10 MB).
const maxRecordSize = 64 << 20

type fileFormat struct {
	Version int  `json:"v"`
	VMs     []VM `json:"vms"`
}

// Registry is the record of one datastore, safe for concurrent use.
type Registry struct {
	path string // "" keeps the record in memory only (tests)

	mu    sync.Mutex
	byID  map[objcrypt.VMID]*VM
	byDir map[string]*VM
}

// Open loads the record at path, or starts an empty one if the file does
// not exist yet. An empty path keeps the record in memory.
func Open(path string) (*Registry, error) {
	r := &Registry{path: path, byID: map[objcrypt.VMID]*VM{}, byDir: map[string]*VM{}}
	if path == "" {
		return r, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open VM record: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, fmt.Errorf("read VM record %s: %w", path, err)
	}
	vms, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("VM record %s: %w", path, err)
	}
	for i := range vms {
		v := vms[i]
		r.byID[v.ID], r.byDir[v.Dir] = &v, &v
	}
	return r, nil
}

// Parse decodes and validates a record file's contents.
func Parse(b []byte) ([]VM, error) {
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("%d bytes exceed %d: %w", len(b), maxRecordSize, ErrCorrupt)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var ff fileFormat
	if err := dec.Decode(&ff); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrCorrupt)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data: %w", ErrCorrupt)
	}
	if ff.Version != recordVersion {
		return nil, fmt.Errorf("version %d, want %d: %w", ff.Version, recordVersion, ErrCorrupt)
	}
	ids := map[objcrypt.VMID]bool{}
	dirs := map[string]bool{}
	for i := range ff.VMs {
		v := &ff.VMs[i]
		if err := v.validate(); err != nil {
			return nil, err
		}
		if ids[v.ID] || dirs[v.Dir] {
			return nil, fmt.Errorf("VM %s or directory %q recorded twice: %w", v.ID, v.Dir, ErrCorrupt)
		}
		ids[v.ID], dirs[v.Dir] = true, true
	}
	return ff.VMs, nil
}

func (v *VM) validate() error {
	if err := CheckDir(v.Dir); err != nil {
		return fmt.Errorf("VM %s: %w", v.ID, err)
	}
	switch v.State {
	case Encrypted, Decrypted, Shredded:
	default:
		return fmt.Errorf("VM %s: unknown state %q: %w", v.ID, v.State, ErrCorrupt)
	}
	p, err := objcrypt.ParsePolicy(v.Policy)
	if err != nil {
		return fmt.Errorf("VM %s: policy: %v: %w", v.ID, err, ErrCorrupt)
	}
	if p.VMID != v.ID {
		return fmt.Errorf("VM %s: policy names VM %s: %w", v.ID, p.VMID, ErrCorrupt)
	}
	for _, k := range v.KEKs {
		if err := objcrypt.CheckPrintable(k.ID); err != nil || k.ID == "" || len(k.ID) > objcrypt.MaxKEKIDLen {
			return fmt.Errorf("VM %s: KEK id %q: %w", v.ID, k.ID, ErrCorrupt)
		}
	}
	return nil
}

// CheckDir accepts a directory path as the record keeps it: "." or a
// clean, relative, slash-separated path without "." or ".." elements.
func CheckDir(dir string) error {
	if dir == "." {
		return nil
	}
	if dir == "" || path.Clean(dir) != dir || strings.HasPrefix(dir, "/") || dir == ".." || strings.HasPrefix(dir, "../") || strings.ContainsRune(dir, 0) {
		return fmt.Errorf("directory %q is not a clean relative path: %w", dir, ErrCorrupt)
	}
	return nil
}

// Lookup returns the VM whose directory tree holds dir: the recorded VM
// directory that is dir itself or its nearest ancestor.
func (r *Registry) Lookup(dir string) (VM, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for d := dir; ; d = path.Dir(d) {
		if v, ok := r.byDir[d]; ok {
			return v.clone(), true
		}
		if d == "." || d == "/" || d == "" {
			return VM{}, false
		}
	}
}

// ByID returns the recorded VM with id.
func (r *Registry) ByID(id objcrypt.VMID) (VM, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.byID[id]; ok {
		return v.clone(), true
	}
	return VM{}, false
}

// All returns every recorded VM, sorted by directory.
func (r *Registry) All() []VM {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]VM, 0, len(r.byID))
	for _, v := range r.byID {
		out = append(out, v.clone())
	}
	slices.SortFunc(out, func(a, b VM) int { return strings.Compare(a.Dir, b.Dir) })
	return out
}

// Put records v (new, or replacing the entry with the same id) and saves
// the record. It fails with ErrConflict if another VM is recorded for
// v.Dir; a VM recorded there with the same directory is replaced only if
// replace is true (a directory encrypted again after a decrypt).
func (r *Registry) Put(v VM, replace bool) error {
	if err := v.validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byDir[v.Dir]; ok && old.ID != v.ID {
		if !replace {
			return fmt.Errorf("directory %q: VM %s: %w", v.Dir, old.ID, ErrConflict)
		}
		delete(r.byID, old.ID)
		delete(r.byDir, old.Dir)
	}
	if old, ok := r.byID[v.ID]; ok && old.Dir != v.Dir {
		return fmt.Errorf("VM %s is recorded for %q, not %q: %w", v.ID, old.Dir, v.Dir, ErrConflict)
	}
	c := v.clone()
	r.byID[c.ID], r.byDir[c.Dir] = &c, &c
	return r.saveLocked()
}

// Remove forgets VM id (its directory was removed through the mount).
func (r *Registry) Remove(id objcrypt.VMID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.byID[id]
	if !ok {
		return nil
	}
	delete(r.byID, id)
	delete(r.byDir, v.Dir)
	return r.saveLocked()
}

// Move updates the record after a directory rename through the mount:
// every VM directory at or below from moves below to. With exchange
// (RENAME_EXCHANGE) the VM directories below to move below from as well.
func (r *Registry) Move(from, to string, exchange bool) error {
	if err := CheckDir(from); err != nil {
		return err
	}
	if err := CheckDir(to); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var moved []*VM
	var back []*VM
	for _, v := range r.byID {
		switch {
		case under(v.Dir, from):
			moved = append(moved, v)
		case exchange && under(v.Dir, to):
			back = append(back, v)
		}
	}
	if len(moved) == 0 && len(back) == 0 {
		return nil
	}
	for _, v := range append(slices.Clone(moved), back...) {
		delete(r.byDir, v.Dir)
	}
	for _, v := range moved {
		v.Dir = reroot(v.Dir, from, to)
	}
	for _, v := range back {
		v.Dir = reroot(v.Dir, to, from)
	}
	for _, v := range append(moved, back...) {
		r.byDir[v.Dir] = v
	}
	return r.saveLocked()
}

// under reports whether dir is root or below it.
func under(dir, root string) bool {
	return root == "." || dir == root || strings.HasPrefix(dir, root+"/")
}

func reroot(dir, from, to string) string {
	if dir == from {
		return to
	}
	rest := strings.TrimPrefix(dir, from+"/")
	if from == "." {
		rest = dir
	}
	return path.Join(to, rest)
}

// saveLocked writes the whole record atomically; the caller holds mu.
func (r *Registry) saveLocked() error {
	if r.path == "" {
		return nil
	}
	ff := fileFormat{Version: recordVersion, VMs: make([]VM, 0, len(r.byID))}
	for _, v := range r.byID {
		ff.VMs = append(ff.VMs, *v)
	}
	slices.SortFunc(ff.VMs, func(a, b VM) int { return strings.Compare(a.Dir, b.Dir) })
	b, err := json.MarshalIndent(ff, "", " ")
	if err != nil {
		return fmt.Errorf("encode VM record: %w", err)
	}
	dir := filepath.Dir(r.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("VM record directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".vmrecord-*")
	if err != nil {
		return fmt.Errorf("save VM record: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: ENOENT, ignored
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save VM record: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save VM record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save VM record: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.path); err != nil {
		return fmt.Errorf("save VM record: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save VM record: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save VM record: sync %s: %w", dir, err)
	}
	return nil
}
