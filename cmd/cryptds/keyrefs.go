package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmctl"
)

// kekRefs counts what references one KEK.
type kekRefs struct {
	ID       string `json:"kek_id"`
	Policies int    `json:"policies"`       // directory policies on the datastore
	Objects  int    `json:"objects"`        // encrypted objects on the datastore
	Backup   int    `json:"backup_objects"` // encrypted objects (and policies) in the backups given
	// Example is one path that references the key (the datastore's
	// first, else the backup's), so an operator can look.
	Example string `json:"example,omitempty"`
}

// inUse reports whether the datastore still needs the key.
func (r *kekRefs) inUse() bool { return r.Policies+r.Objects > 0 }

// refIndex collects kekRefs by KEK id.
type refIndex map[string]*kekRefs

func (ix refIndex) get(id string) *kekRefs {
	r := ix[id]
	if r == nil {
		r = &kekRefs{ID: id}
		ix[id] = r
	}
	return r
}

// sorted returns the entries by KEK id.
func (ix refIndex) sorted() []*kekRefs {
	out := make([]*kekRefs, 0, len(ix))
	for _, r := range ix {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// scanTree adds the KEKs referenced under dir: directory policies, and the
// header of every regular file (the xattr, or the in-file copy when the
// xattr was lost, as after cp or rsync without -X). backup says which
// counter the objects go to.
func (ix refIndex) scanTree(dir string, backup bool) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			raw, err := xattr.LGet(p, vmctl.PolicyAttr)
			if err != nil {
				return nil // no policy (or no xattrs here)
			}
			pol, err := objcrypt.ParsePolicy(raw)
			if err != nil {
				return nil // fsck reports unparsable policies
			}
			ix.add(pol.KEKID, p, backup, true)
		case d.Type().IsRegular():
			// A leftover copy of an interrupted conversion counts like
			// an object: it holds data under its key.
			if id, ok := fileKEK(p); ok {
				ix.add(id, p, backup, false)
			}
		}
		return nil
	})
}

func (ix refIndex) add(id, path string, backup, policy bool) {
	r := ix.get(id)
	switch {
	case backup:
		r.Backup++
	case policy:
		r.Policies++
	default:
		r.Objects++
	}
	if r.Example == "" || (!backup && r.Policies+r.Objects == 1) {
		r.Example = path
	}
}

// fileKEK returns the KEK id in the header of the file at p.
func fileKEK(p string) (string, bool) {
	if raw, err := xattr.LGet(p, headerAttr); err == nil {
		if h, err := objcrypt.ParseHeader(raw); err == nil {
			return h.KEKID, true
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return "", false
	}
	defer f.Close()
	return regionKEK(f)
}

// regionKEK parses the in-file header copy at the start of r.
func regionKEK(r io.Reader) (string, bool) {
	region := make([]byte, objcrypt.HeaderRegionSize)
	if _, err := io.ReadFull(r, region); err != nil {
		return "", false
	}
	h, err := objcrypt.ParseRegion(region)
	if err != nil {
		return "", false
	}
	return h.KEKID, true
}

// paxXattr is how GNU tar --xattrs (and Go's archive/tar) store xattrs.
const paxXattr = "SCHILY.xattr."

// scanTar adds the KEKs a tar archive (a ciphertext backup) references:
// policies and headers kept as xattrs (tar --xattrs), or the in-file
// header copy of each file.
func (ix refIndex) scanTar(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		name := path + ":" + h.Name
		if raw, ok := h.PAXRecords[paxXattr+vmctl.PolicyAttr]; ok {
			if pol, err := objcrypt.ParsePolicy([]byte(raw)); err == nil {
				ix.add(pol.KEKID, name, true, true)
			}
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if raw, ok := h.PAXRecords[paxXattr+headerAttr]; ok {
			if hd, err := objcrypt.ParseHeader([]byte(raw)); err == nil {
				ix.add(hd.KEKID, name, true, false)
				continue
			}
		}
		if id, ok := regionKEK(tr); ok {
			ix.add(id, name, true, false)
		}
	}
}

// scanBackup scans a ciphertext backup: a directory tree or a tar file.
func (ix refIndex) scanBackup(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if fi.IsDir() {
		return ix.scanTree(path, true)
	}
	return ix.scanTar(path)
}
