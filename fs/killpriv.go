package fs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// killPrivFS takes over clearing set-user-ID and set-group-ID bits from the
// kernel (FUSE_HANDLE_KILLPRIV_V2).
//
// Without that capability the kernel asks for security.capability with a
// GETXATTR before every buffered write, to learn whether the write must
// drop privileges: two round trips per write instead of one (strace: 20,000
// requests for 10,000 4 KiB writes; buffered random writes 1.7-2.9x faster
// without them, docs/BENCHMARKS.md). With it, the kernel marks inodes
// without suid/sgid bits S_NOSEC and skips the check, and flags the
// requests after which a local filesystem would clear the bits instead: a
// WRITE, an O_TRUNC open and a truncate by a caller without CAP_FSETID. The
// daemon does its backing I/O as root, which keeps the bits, so the
// clearing is done here, before the write, by the rules of the kernel's
// setattr_should_drop_suidgid: suid always; sgid with group execute, or
// when the caller is not in the file's group (TestKillPriv compares each
// case with the backing filesystem).
//
// fallocate and copy_file_range carry no kill flag: the kernel leaves
// them to us without saying whether the caller holds CAP_FSETID, so that is
// read from /proc, only for files that have a bit to clear.
//
// Nothing is needed for security.capability: the backing filesystem drops
// it on every write, truncate and chown, root's included
// (TestKillPrivCapability). A chown is passed to the backing store, which
// would clear them as for root; the kernel flags every chown, and
// killOnChown clears them as for the caller.
type killPrivFS struct {
	fuse.RawFileSystem
}

// Writev is the WRITE request of go-fuse (Write is its fallback).
func (k *killPrivFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if st := k.beforeWrite(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Writev(cancel, in, data)
}

// Write serves WRITE when Writev is not implemented below us.
func (k *killPrivFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if st := k.beforeWrite(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

// beforeWrite clears the bits when the WRITE carries the kill flag.
func (k *killPrivFS) beforeWrite(cancel <-chan struct{}, in *fuse.WriteIn) fuse.Status {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return fuse.OK
	}
	return k.killSuidgid(cancel, in.InHeader)
}

// SetAttr clears the bits before a truncate by an unprivileged caller and
// before a chown by anyone.
func (k *killPrivFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 && in.Valid&fuse.FATTR_MODE == 0 {
		kill := k.killSuidgid
		if in.Valid&(fuse.FATTR_UID|fuse.FATTR_GID) != 0 {
			kill = k.killOnChown
		}
		if st := kill(cancel, in.InHeader); !st.Ok() {
			return st
		}
	}
	return k.RawFileSystem.SetAttr(cancel, in, out)
}

// Fallocate clears the bits before an allocation by an unprivileged caller.
func (k *killPrivFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if st := k.killUnlessFsetid(cancel, in.InHeader); !st.Ok() {
		return st
	}
	return k.RawFileSystem.Fallocate(cancel, in)
}

// CopyFileRange clears the bits of the destination before a copy by an
// unprivileged caller.
func (k *killPrivFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	dst := in.InHeader
	dst.NodeId = in.NodeIdOut
	if st := k.killUnlessFsetid(cancel, dst); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.CopyFileRange(cancel, in)
}

// Open clears the bits after an O_TRUNC open by an unprivileged caller
// (the truncation happens in the open). If that fails, the handle is
// released and the open fails.
func (k *killPrivFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := k.RawFileSystem.Open(cancel, in, out)
	if !st.Ok() || in.Mode&fuse.OPEN_KILL_SUIDGID == 0 {
		return st
	}
	if st := k.killSuidgid(cancel, in.InHeader); !st.Ok() {
		k.RawFileSystem.Release(cancel, &fuse.ReleaseIn{InHeader: in.InHeader, Fh: out.Fh, Flags: in.Flags})
		return st
	}
	return fuse.OK
}

// Create clears the bits when an O_TRUNC create found an existing file.
func (k *killPrivFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := k.RawFileSystem.Create(cancel, in, name, out)
	if !st.Ok() || in.OpenFlags&fuse.OPEN_KILL_SUIDGID == 0 {
		return st
	}
	child := in.InHeader
	child.NodeId = out.NodeId
	if st := k.killSuidgid(cancel, child); !st.Ok() {
		k.RawFileSystem.Release(cancel, &fuse.ReleaseIn{InHeader: child, Fh: out.Fh, Flags: in.Flags})
		k.RawFileSystem.Forget(out.NodeId, 1)
		return st
	}
	return fuse.OK
}

// killUnlessFsetid is killSuidgid for requests without a kill flag.
func (k *killPrivFS) killUnlessFsetid(cancel <-chan struct{}, h fuse.InHeader) fuse.Status {
	return k.kill(cancel, h, true)
}

// killSuidgid clears S_ISUID, and S_ISGID when group execute is set, on the
// regular file h.NodeId names.
func (k *killPrivFS) killSuidgid(cancel <-chan struct{}, h fuse.InHeader) fuse.Status {
	return k.kill(cancel, h, false)
}

// kill clears the bits killBits names; checkCap first asks whether the
// caller holds CAP_FSETID (then nothing is cleared).
func (k *killPrivFS) kill(cancel <-chan struct{}, h fuse.InHeader, checkCap bool) fuse.Status {
	var attr fuse.AttrOut
	if st := k.RawFileSystem.GetAttr(cancel, &fuse.GetAttrIn{InHeader: h}, &attr); !st.Ok() {
		return st
	}
	kill := killBits(attr.Mode, attr.Gid, h.Caller)
	if kill == 0 || checkCap && procHasCap(h.Caller.Pid, unix.CAP_FSETID) {
		return fuse.OK
	}
	return k.clearBits(cancel, h, attr.Mode, kill)
}

// killOnChown clears the bits a chown clears. The kernel flags every chown
// of a non-directory, whatever the caller holds (fuse_do_setattr); a local
// filesystem clears suid always, and sgid by setattr_should_drop_sgid: with
// group execute, or when the caller is neither in the file's (old) group nor
// holds CAP_FSETID. So root's chown keeps sgid without group execute.
func (k *killPrivFS) killOnChown(cancel <-chan struct{}, h fuse.InHeader) fuse.Status {
	var attr fuse.AttrOut
	if st := k.RawFileSystem.GetAttr(cancel, &fuse.GetAttrIn{InHeader: h}, &attr); !st.Ok() {
		return st
	}
	kill := killBits(attr.Mode, attr.Gid, h.Caller)
	if kill&syscall.S_ISGID != 0 && attr.Mode&syscall.S_IXGRP == 0 && procHasCap(h.Caller.Pid, unix.CAP_FSETID) {
		kill &^= syscall.S_ISGID
	}
	if kill == 0 {
		return fuse.OK
	}
	return k.clearBits(cancel, h, attr.Mode, kill)
}

// clearBits removes kill from mode, the current mode of h.NodeId.
func (k *killPrivFS) clearBits(cancel <-chan struct{}, h fuse.InHeader, mode, kill uint32) fuse.Status {
	var out fuse.AttrOut
	in := &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: h, Valid: fuse.FATTR_MODE, Mode: mode &^ kill &^ syscall.S_IFMT}}
	return k.RawFileSystem.SetAttr(cancel, in, &out)
}

// killBits returns the privilege bits a modification by caller clears from
// a file with mode and group gid. The caller lacks CAP_FSETID (the kernel
// sets the kill flags only then).
func killBits(mode, gid uint32, caller fuse.Caller) uint32 {
	if mode&syscall.S_IFMT != syscall.S_IFREG {
		return 0
	}
	kill := mode & syscall.S_ISUID
	if mode&syscall.S_ISGID != 0 && (mode&syscall.S_IXGRP != 0 || !inGroup(caller, gid)) {
		kill |= syscall.S_ISGID
	}
	return kill
}

// procHasCap reports whether process pid has capability c in its
// effective set (a process that is gone has none).
func procHasCap(pid uint32, c int) bool {
	v, ok := procStatus(pid, "CapEff:")
	if !ok {
		return false
	}
	set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
	return err == nil && set&(1<<c) != 0
}

// procStatus returns the value of one field of /proc/PID/status.
func procStatus(pid uint32, field string) (string, bool) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", false
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, field); ok {
			return v, true
		}
	}
	return "", false
}

// inGroup reports whether caller has gid as its filesystem group or as a
// supplementary group (from /proc; a caller that is gone is in no group).
func inGroup(caller fuse.Caller, gid uint32) bool {
	if caller.Gid == gid {
		return true
	}
	groups, _ := procStatus(caller.Pid, "Groups:")
	for _, g := range strings.Fields(groups) {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil && uint32(n) == gid {
			return true
		}
	}
	return false
}
