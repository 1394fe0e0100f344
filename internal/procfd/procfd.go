// Package procfd lists the files that processes hold open, from /proc: the
// CLI names them when a mount is busy, and vmctl refuses to convert a VM
// whose files a running process has open for writing.
package procfd

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// File is a path that one process holds open.
type File struct {
	Path     string // the descriptor's target
	PID      int
	Command  string // /proc/PID/comm
	Writable bool   // some descriptor of PID on Path is open for writing
	// FuseServer: PID holds /dev/fuse open, i.e. it serves a FUSE file
	// system. A cryptds daemon holds the backing files of every file open
	// through its mount, so callers that look for a VM's writers skip it:
	// the writer is the process behind it, on the mount side.
	FuseServer bool
}

// Under lists the files at or under any of dirs held open by any process,
// one entry per path and process, sorted by path then pid. Processes that
// vanish or cannot be read are skipped: this is a report, not a lock, and a
// process may open a file right after the scan.
func Under(dirs ...string) []File {
	return under("/proc", dirs)
}

func under(proc string, dirs []string) []File {
	fds, _ := filepath.Glob(filepath.Join(proc, "[0-9]*", "fd", "*"))
	byKey := map[[2]string]*File{}
	fuse := map[string]bool{} // pid -> holds /dev/fuse
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || !underAny(target, dirs) {
			continue
		}
		rel, _ := filepath.Rel(proc, fd) // PID/fd/N
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) != 3 {
			continue
		}
		pid, err := strconv.Atoi(parts[0])
		if err != nil {
			continue
		}
		key := [2]string{target, parts[0]}
		f, ok := byKey[key]
		if !ok {
			comm, _ := os.ReadFile(filepath.Join(proc, parts[0], "comm"))
			f = &File{Path: target, PID: pid, Command: string(bytes.TrimSpace(comm))}
			server, seen := fuse[parts[0]]
			if !seen {
				server = holdsFuseDevice(filepath.Join(proc, parts[0], "fd"))
				fuse[parts[0]] = server
			}
			f.FuseServer = server
			byKey[key] = f
		}
		if flags, ok := fdFlags(filepath.Join(proc, parts[0], "fdinfo", parts[2])); ok {
			if acc := flags & unix.O_ACCMODE; acc == unix.O_WRONLY || acc == unix.O_RDWR {
				f.Writable = true
			}
		}
	}
	out := make([]File, 0, len(byKey))
	for _, f := range byKey {
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].PID < out[j].PID
	})
	return out
}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		d = strings.TrimSuffix(d, "/")
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// holdsFuseDevice reports whether a descriptor in the fd directory points
// to /dev/fuse.
func holdsFuseDevice(fdDir string) bool {
	fds, _ := filepath.Glob(filepath.Join(fdDir, "*"))
	for _, fd := range fds {
		if t, err := os.Readlink(fd); err == nil && t == "/dev/fuse" {
			return true
		}
	}
	return false
}

// fdFlags reads the octal "flags:" line of an fdinfo file.
func fdFlags(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "flags" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
		if err != nil {
			return 0, false
		}
		return int(n), true
	}
	return 0, false
}

// Dir is a process whose working or root directory is at or under a path:
// it keeps a mount busy without holding any file open.
type Dir struct {
	Path    string
	PID     int
	Command string
	Kind    string // "working directory" or "root directory"
}

// DirsUnder lists the processes whose working or root directory is at or
// under any of dirs, sorted by pid.
func DirsUnder(dirs ...string) []Dir {
	return dirsUnder("/proc", dirs)
}

func dirsUnder(proc string, dirs []string) []Dir {
	var out []Dir
	pids, _ := filepath.Glob(filepath.Join(proc, "[0-9]*"))
	for _, p := range pids {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil {
			continue
		}
		for _, k := range []struct{ link, kind string }{{"cwd", "working directory"}, {"root", "root directory"}} {
			target, err := os.Readlink(filepath.Join(p, k.link))
			if err != nil || !underAny(target, dirs) {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(p, "comm"))
			out = append(out, Dir{Path: target, PID: pid, Command: string(bytes.TrimSpace(comm)), Kind: k.kind})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}
