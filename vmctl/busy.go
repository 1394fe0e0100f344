package vmctl

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

// openWriters lists the file descriptors of all processes that are open for
// writing (O_WRONLY or O_RDWR) on a path equal to or under one of dirs. It
// reads /proc/<pid>/fd and /proc/<pid>/fdinfo; processes that vanish or
// cannot be read are skipped. It is a guard against converting a running
// VM, not a lock: a process may open a file right after the scan, which is
// why conversion also checks that each object did not change while copied.
func openWriters(dirs ...string) []OpenFile {
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	var out []OpenFile
	seen := map[OpenFile]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || !underAny(target, dirs) {
			continue
		}
		parts := strings.Split(fd, "/") // "", proc, pid, fd, n
		if len(parts) != 5 {
			continue
		}
		flags, ok := fdFlags(filepath.Join("/proc", parts[2], "fdinfo", parts[4]))
		if !ok {
			continue
		}
		if acc := flags & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
			continue
		}
		pid, _ := strconv.Atoi(parts[2])
		comm, _ := os.ReadFile(filepath.Join("/proc", parts[2], "comm"))
		f := OpenFile{Path: target, PID: pid, Command: string(bytes.TrimSpace(comm))}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
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
