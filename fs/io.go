package fs

import (
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// preadFull reads until buf is full or the end of the file; it returns how
// much it read. EINTR is retried.
func preadFull(fd int, buf []byte, off int64) (int, error) {
	return preadAligned(unix.Pread, fd, buf, off, 1)
}

// preadAligned is preadFull for a descriptor whose reads must stay aligned
// to align bytes (O_DIRECT): a read that ends off the alignment is the end
// of the file, since another read from there would be refused.
func preadAligned(pr ioAtFunc, fd int, buf []byte, off int64, align int) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := pr(fd, buf[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("pread at %d: %w", off+int64(done), err)
		}
		done += n
		if n == 0 || n%align != 0 {
			break
		}
	}
	return done, nil
}

// pwriteFull writes all of buf at off. A short write followed by an error
// returns that error (ENOSPC typically).
func pwriteFull(fd int, buf []byte, off int64) error {
	_, err := pwriteCounted(unix.Pwrite, fd, buf, off)
	return err
}

// ioAtFunc is the pread(2) and pwrite(2) signature.
type ioAtFunc func(fd int, p []byte, off int64) (int, error)

// pwriteCounted writes all of buf at off with pw and returns how many bytes
// reached the file: on an error, exactly the prefix buf[:n] was written
// (a regular file's write(2) reports a short count before it fails).
func pwriteCounted(pw ioAtFunc, fd int, buf []byte, off int64) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := pw(fd, buf[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("pwrite at %d: %w", off+int64(done), err)
		}
		if n == 0 {
			return done, fmt.Errorf("pwrite at %d: %w", off+int64(done), io.ErrShortWrite)
		}
		done += n
	}
	return done, nil
}
