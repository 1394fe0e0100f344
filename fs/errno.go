package fs

import (
	"errors"
	"os"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
)

// toErrno is the one place where Go errors become FUSE errnos. Everything
// below the FUSE edge returns ordinary (wrapped) errors; an errno from the
// backing store (ENOSPC, EIO, EROFS, ...) is passed through unchanged, and
// everything that means "the stored data or its keys are not what they
// should be" becomes EIO.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, os.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, os.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, objcrypt.ErrAuth), errors.Is(err, objcrypt.ErrHeader), errors.Is(err, objcrypt.ErrVersion):
		return syscall.EIO
	}
	return syscall.EIO
}
