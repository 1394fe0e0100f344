package vmctl

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors the CLI maps to exit codes; test with errors.Is. Every
// returned error wraps one of them or carries the underlying OS error.
var (
	// ErrNotVM means the path is not a directory directly under the root of
	// a cryptds mount, so it has no VM policy to change.
	ErrNotVM = errors.New("not a VM directory of a cryptds mount")
	// ErrNotMount means the path given as a datastore is not the root of a
	// cryptds mount.
	ErrNotMount = errors.New("not the root of a cryptds mount")
	// ErrAlreadyEncrypted means Encrypt found nothing to do: the policy is
	// set and every object is already encrypted.
	ErrAlreadyEncrypted = errors.New("VM is already encrypted")
	// ErrNotEncrypted means Decrypt found nothing to do: no policy and no
	// encrypted object.
	ErrNotEncrypted = errors.New("VM is not encrypted")
	// ErrBusy means a process has an object of the VM open for writing (a
	// running VM); see BusyError for which.
	ErrBusy = errors.New("VM objects are open for writing")
	// ErrNoSpace means the backing store has not enough free space for the
	// copy of the largest object.
	ErrNoSpace = errors.New("not enough free space on the datastore")
	// ErrHardLink means an object has several hard links; copy and rename
	// would break the link set, so it is refused.
	ErrHardLink = errors.New("object has more than one hard link")
	// ErrChanged means an object was modified while it was being copied;
	// the copy was discarded and the original left untouched.
	ErrChanged = errors.New("object changed while it was being converted")
	// ErrPolicyNotApplied means the filesystem created the copy in the
	// wrong state (plain when encrypting, or the reverse), e.g. because the
	// policy does not reach a subdirectory; the copy was discarded.
	ErrPolicyNotApplied = errors.New("the filesystem did not apply the VM policy to a new object")
	// ErrOrphan means a leftover temporary file has no original next to it;
	// it may be the only copy of the data, so it is never deleted
	// automatically.
	ErrOrphan = errors.New("leftover conversion file without its original")
)

// OpenFile is one file descriptor that keeps a VM busy.
type OpenFile struct {
	Path    string `json:"path"`
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// BusyError lists who holds objects of a VM open for writing, so the admin
// can stop the right VM or process. It matches ErrBusy.
type BusyError struct {
	VM    string
	Files []OpenFile
}

func (e *BusyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v:", e.VM, ErrBusy)
	for i, f := range e.Files {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %s (%s pid %d)", f.Path, f.Command, f.PID)
	}
	b.WriteString("; stop the VM first (or add --force if these are not the VM's writers)")
	return b.String()
}

// Is makes errors.Is(err, ErrBusy) true.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }
