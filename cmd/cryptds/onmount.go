package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cryptds/cryptds/internal/mountinfo"
)

// fuseSuperMagic is statfs(2)'s f_type of every FUSE mount.
const fuseSuperMagic = 0x65735546

// onCryptdsMount reports whether path lies on a cryptds mount and, if so,
// that mount's point and the backing path that path shows. fsck and
// inspect read backing files: through the mount they see plaintext and
// would report a healthy datastore corrupt. The file system type comes
// from statfs (the kernel's answer for that very path) and the mount from
// the mount table, whose cryptds source names the backing directory.
func onCryptdsMount(path string) (mnt, backing string, ok bool) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", false
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	var st unix.Statfs_t
	if err := unix.Statfs(abs, &st); err != nil || st.Type != fuseSuperMagic {
		return "", "", false
	}
	mounts, err := readMounts()
	if err != nil {
		return "", "", false
	}
	m, found := mountinfo.Containing(mounts, abs)
	if !found || !strings.HasPrefix(m.Source, mountinfo.CryptdsSourcePrefix) {
		return "", "", false
	}
	rel, err := filepath.Rel(m.Point, abs)
	if err != nil {
		return "", "", false
	}
	return m.Point, filepath.Join(strings.TrimPrefix(m.Source, mountinfo.CryptdsSourcePrefix), rel), true
}

// refuseOnMount refuses (exit 3) a path on a cryptds mount for a command
// that reads backing files, naming the backing path to use instead.
func refuseOnMount(command, path, hint string) error {
	mnt, backing, ok := onCryptdsMount(path)
	if !ok {
		return nil
	}
	return withCode(ExitMount, fmt.Errorf("%s is on the cryptds mount %s, which shows plaintext; %s reads the backing files: %s", path, mnt, command, fmt.Sprintf(hint, backing)))
}
