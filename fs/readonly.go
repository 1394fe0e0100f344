package fs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// readOnlyFS refuses, with EROFS, every request that would change the
// datastore, for a mount made read-only (MountOptions.ReadOnly). The
// kernel refuses them itself on a read-only mount, but a FUSE daemon is
// not told about `mount -o remount,rw`, after which the kernel would pass
// them on: a read-only daemon has no write journal and must not take
// writes, change policies or create keys then either.
type readOnlyFS struct {
	fuse.RawFileSystem
}

const erofs = fuse.Status(syscall.EROFS)

// writeAccess reports whether open flags ask to change the file.
func writeAccess(flags uint32) bool {
	return flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0
}

// Open refuses opens for writing and O_TRUNC.
func (r *readOnlyFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if writeAccess(in.Flags) {
		return erofs
	}
	return r.RawFileSystem.Open(cancel, in, out)
}

// SetAttr refuses chmod, chown, truncate and utimes.
func (r *readOnlyFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return erofs
}

// Mknod refuses.
func (r *readOnlyFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return erofs
}

// Mkdir refuses.
func (r *readOnlyFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return erofs
}

// Unlink refuses.
func (r *readOnlyFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return erofs
}

// Rmdir refuses.
func (r *readOnlyFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return erofs
}

// Rename refuses.
func (r *readOnlyFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return erofs
}

// Link refuses.
func (r *readOnlyFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return erofs
}

// Symlink refuses.
func (r *readOnlyFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return erofs
}

// SetXAttr refuses, policy changes (rekey, shred) included.
func (r *readOnlyFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return erofs
}

// RemoveXAttr refuses.
func (r *readOnlyFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return erofs
}

// Create refuses.
func (r *readOnlyFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return erofs
}

// Tmpfile refuses.
func (r *readOnlyFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return erofs
}

// Write refuses.
func (r *readOnlyFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	return 0, erofs
}

// Writev refuses.
func (r *readOnlyFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	return 0, erofs
}

// CopyFileRange refuses.
func (r *readOnlyFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	return 0, erofs
}

// Fallocate refuses.
func (r *readOnlyFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return erofs
}
