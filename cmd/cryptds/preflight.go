package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/xattr"

	"github.com/cryptds/cryptds/internal/mountinfo"
	"github.com/cryptds/cryptds/internal/procfd"
	"github.com/cryptds/cryptds/objcrypt"
)

// datastoreIDAttr names the backing root's stable random id; KEK names in
// the KMS include it so two datastores never collide.
const datastoreIDAttr = objcrypt.XattrDatastore

// checkDatastore verifies the backing directory exists and supports user
// xattrs (the format's header lives in one), and returns its datastore id,
// creating it on first use. An id that is not exactly "ds-" and 16 hex
// digits is refused: whoever writes the backing store chooses it, and it
// becomes a path in the state directory and part of KEK names.
func checkDatastore(dir string) (string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", withCode(ExitMount, fmt.Errorf("datastore: %w", err))
	}
	if !st.IsDir() {
		return "", withCode(ExitMount, fmt.Errorf("datastore %s is not a directory", dir))
	}
	id, err := xattr.Get(dir, datastoreIDAttr)
	if err == nil && len(id) > 0 {
		return parseDatastoreID(dir, id)
	}
	if err != nil && !errors.Is(err, xattr.ENOATTR) {
		if errors.Is(err, syscall.ENOTSUP) {
			return "", withCode(ExitMount, fmt.Errorf("datastore %s: the backing filesystem does not support user xattrs, which cryptds needs for its headers (ext4, xfs, btrfs and tmpfs do)", dir))
		}
		return "", withCode(ExitMount, fmt.Errorf("datastore %s: read %s: %w", dir, datastoreIDAttr, err))
	}
	newID, err := objcrypt.NewDatastoreID(nil)
	if err != nil {
		return "", err
	}
	if err := xattr.Set(dir, datastoreIDAttr, []byte(newID)); err != nil {
		if errors.Is(err, syscall.ENOTSUP) {
			return "", withCode(ExitMount, fmt.Errorf("datastore %s: the backing filesystem does not support user xattrs, which cryptds needs for its headers (ext4, xfs, btrfs and tmpfs do)", dir))
		}
		return "", withCode(ExitMount, fmt.Errorf("datastore %s: write %s: %w", dir, datastoreIDAttr, err))
	}
	return newID, nil
}

// parseDatastoreID validates the id found on datastore dir (exit 3 when
// it is not one cryptds wrote).
func parseDatastoreID(dir string, raw []byte) (string, error) {
	id, err := objcrypt.ParseDatastoreID(raw)
	if err != nil {
		return "", withCode(ExitMount, fmt.Errorf("datastore %s: refusing its %s xattr: %w; cryptds writes \"ds-\" and 16 hex digits, so the backing store was edited: restore the original value", dir, datastoreIDAttr, err))
	}
	return id, nil
}

// detachDeadMounts lazily unmounts the mounts of datastore whose daemon is
// gone. After a kill -9 or a crash the kernel keeps the FUSE mount and
// every access to it fails with ENOTCONN until someone detaches it, so a
// restart (systemd's Restart=on-failure, an operator running the same
// command again) could never mount. Only mounts whose source names this
// datastore are touched. It returns the mount points it detached.
func detachDeadMounts(datastore string) ([]string, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var detached []string
	for _, m := range mounts {
		if m.Source != fsName(datastore) || !strings.HasPrefix(m.FSType, "fuse") {
			continue
		}
		if !connectionGone(m.Point) {
			continue
		}
		if err := syscall.Unmount(m.Point, syscall.MNT_DETACH); err != nil {
			return detached, withCode(ExitMount, fmt.Errorf("detach the dead mount of %s at %s: %w", datastore, m.Point, err))
		}
		detached = append(detached, m.Point)
	}
	return detached, nil
}

// deadMountProbe bounds the wait for a FUSE mount to answer statfs: a
// daemon that is stopped or stuck holds the call, and is not a dead one.
const deadMountProbe = 2 * time.Second

// connectionGone reports whether path is on a FUSE mount whose daemon has
// gone (ENOTCONN). It asks with statfs, which the kernel never answers from
// a cache, unlike stat.
func connectionGone(path string) bool {
	res := make(chan error, 1)
	go func() {
		var fs syscall.Statfs_t
		res <- syscall.Statfs(path, &fs)
	}()
	select {
	case err := <-res:
		return errors.Is(err, syscall.ENOTCONN)
	case <-time.After(deadMountProbe):
		return false
	}
}

// checkMountpoint refuses a missing, non-directory, non-empty or already
// mounted mountpoint, and a datastore that is already mounted by cryptds.
func checkMountpoint(mnt, datastore string) error {
	if connectionGone(mnt) {
		return withCode(ExitMount, fmt.Errorf("mountpoint %s is a FUSE mount whose daemon is gone; unmount it first (cryptds umount %s)", mnt, mnt))
	}
	st, err := os.Stat(mnt)
	if err != nil {
		return withCode(ExitMount, fmt.Errorf("mountpoint: %w", err))
	}
	if !st.IsDir() {
		return withCode(ExitMount, fmt.Errorf("mountpoint %s is not a directory", mnt))
	}
	if err := refuseNested(mnt, datastore); err != nil {
		return err
	}
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.Point == mnt {
			return withCode(ExitMount, fmt.Errorf("mountpoint %s is already a mount point (%s)", mnt, m.Source))
		}
		if m.Source == fsName(datastore) {
			return withCode(ExitMount, fmt.Errorf("datastore %s is already mounted at %s", datastore, m.Point))
		}
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		return withCode(ExitMount, fmt.Errorf("mountpoint: %w", err))
	}
	if len(ents) > 0 {
		return withCode(ExitMount, fmt.Errorf("mountpoint %s is not empty (%s); mounting over files would hide them", mnt, plural(len(ents), "entry", "entries")))
	}
	return nil
}

// refuseNested refuses a mountpoint that is the datastore or inside it,
// symlinks resolved: the view would contain itself (lookups recurse,
// writes fail with EIO) and the daemon's own backing accesses would keep
// its mount busy, so neither cryptds umount nor SIGTERM could end it.
func refuseNested(mnt, datastore string) error {
	m, d := resolved(mnt), resolved(datastore)
	switch {
	case m == d:
		return withCode(ExitMount, fmt.Errorf("mountpoint %s is the datastore itself (%s): mount the view elsewhere, e.g. /mnt/%s", mnt, d, filepath.Base(d)))
	case strings.HasPrefix(m, d+"/") || d == "/":
		return withCode(ExitMount, fmt.Errorf("mountpoint %s is inside the datastore %s: the view would contain itself; choose a mountpoint outside it", mnt, d))
	}
	return nil
}

// resolved is path with every symlink resolved, or path itself when it
// cannot be resolved (a missing datastore is reported later, by name).
func resolved(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return r
	}
	return filepath.Clean(path)
}

// fsName is what the kernel mount table shows as the source of our mounts,
// so an already-mounted datastore can be recognised.
func fsName(datastore string) string { return "cryptds:" + datastore }

// readMounts is the kernel mount table.
func readMounts() ([]mountinfo.Entry, error) { return mountinfo.Read() }

// openFilesUnder lists "path (command pid N)" for every file under dir
// held open by any process, to say why a mount is busy.
func openFilesUnder(dir string) []string {
	var out []string
	for _, f := range procfd.Under(dir) {
		out = append(out, fmt.Sprintf("%s (%s pid %d)", f.Path, f.Command, f.PID))
	}
	return out
}
