package vmctl

import "github.com/cryptds/cryptds/internal/procfd"

// openWriters lists the processes that hold a path equal to or under one
// of dirs open for writing (O_WRONLY or O_RDWR). It is a guard against
// converting a running VM, not a lock: a process may open a file right
// after the scan, which is why conversion also checks that each object did
// not change while copied.
func openWriters(dirs ...string) []OpenFile {
	var out []OpenFile
	for _, f := range procfd.Under(dirs...) {
		// A FUSE daemon (the cryptds mount serving this VM) holds the
		// backing file of every file open through it; the writer to name
		// is the process behind it, which holds the mount-side path.
		if f.Writable && !f.FuseServer {
			out = append(out, OpenFile{Path: f.Path, PID: f.PID, Command: f.Command})
		}
	}
	return out
}
