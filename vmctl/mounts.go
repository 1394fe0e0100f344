package vmctl

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cryptds/cryptds/internal/mountinfo"
)

// sourcePrefix starts the mount-table source of every cryptds mount; the
// rest is the absolute backing directory.
const sourcePrefix = "cryptds:"

// mountEntry is one line of the mount table.
type mountEntry = mountinfo.Entry

// parseMountinfo reads the mountinfo format (octal escapes decoded).
func parseMountinfo(r io.Reader) ([]mountEntry, error) { return mountinfo.Parse(r) }

// backingOf returns the backing directory of the cryptds mount whose root is
// point, or "" when point is not one. When mounts are stacked on one point the
// last (topmost) entry is the one a path lookup sees.
func backingOf(mounts []mountEntry, point string) string {
	backing := ""
	for _, m := range mounts {
		if m.Point != point {
			continue
		}
		backing = ""
		if strings.HasPrefix(m.FSType, "fuse") && strings.HasPrefix(m.Source, sourcePrefix) {
			backing = strings.TrimPrefix(m.Source, sourcePrefix)
		}
	}
	return backing
}

func readMounts() ([]mountEntry, error) { return mountinfo.Read() }

// canonical makes a path absolute and resolves symlinks, so it can be
// compared with mount points.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// vmDir is a VM directory resolved to its mount and backing locations.
type vmDir struct {
	name    string // directory name, the VM's name
	path    string // through the mount
	mount   string // mount root
	backing string // the VM directory in the backing store
}

// resolveVM checks that path is a directory directly under a cryptds mount
// root.
func resolveVM(path string) (*vmDir, error) {
	p, err := canonical(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrNotVM, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrNotVM, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: %w: not a directory", path, ErrNotVM)
	}
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	if backingOf(mounts, p) != "" {
		return nil, fmt.Errorf("%s: %w: this is the datastore root; give a VM directory under it", path, ErrNotVM)
	}
	parent := filepath.Dir(p)
	root := backingOf(mounts, parent)
	if root == "" {
		return nil, fmt.Errorf("%s: %w: %s is not the root of a cryptds mount (a VM is a directory directly under it)", path, ErrNotVM, parent)
	}
	v := &vmDir{name: filepath.Base(p), path: p, mount: parent, backing: filepath.Join(root, filepath.Base(p))}
	if st, err := os.Stat(v.backing); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s: backing directory %s is not accessible (run as root on the host of the mount): %v", path, v.backing, err)
	}
	return v, nil
}

// resolveMount checks that path is the root of a cryptds mount and returns
// its canonical path and backing directory.
func resolveMount(path string) (point, backing string, err error) {
	p, err := canonical(path)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w: %w", path, ErrNotMount, err)
	}
	mounts, err := readMounts()
	if err != nil {
		return "", "", err
	}
	backing = backingOf(mounts, p)
	if backing == "" {
		return "", "", fmt.Errorf("%s: %w", path, ErrNotMount)
	}
	return p, backing, nil
}
