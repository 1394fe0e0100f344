package vmctl

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// sourcePrefix starts the mount-table source of every cryptds mount; the
// rest is the absolute backing directory.
const sourcePrefix = "cryptds:"

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct{ point, source, fstype string }

// parseMountinfo reads the mountinfo format (octal escapes decoded).
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 2 {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(lf[4]), fstype: rf[0], source: unescapeMount(rf[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// backingOf returns the backing directory of the cryptds mount whose root is
// point, or "" when point is not one. When mounts are stacked on one point the
// last (topmost) entry is the one a path lookup sees.
func backingOf(mounts []mountEntry, point string) string {
	backing := ""
	for _, m := range mounts {
		if m.point != point {
			continue
		}
		backing = ""
		if strings.HasPrefix(m.fstype, "fuse") && strings.HasPrefix(m.source, sourcePrefix) {
			backing = strings.TrimPrefix(m.source, sourcePrefix)
		}
	}
	return backing
}

func readMounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

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
