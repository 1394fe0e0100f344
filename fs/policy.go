package fs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// Backing xattr names. They are cryptds's own: hidden from listxattr
// through the mount and never settable through it.
const (
	xattrPrefix = "user.cryptds."
	xattrHeader = "user.cryptds.hdr"
	xattrPolicy = "user.cryptds.policy"
	xattrStatus = "user.cryptds.status"
)

// getxattrAlloc reads a whole xattr value of a path.
func getxattrAlloc(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		sz, err := unix.Getxattr(path, name, buf)
		if err == nil {
			return buf[:sz], nil
		}
		if !errors.Is(err, unix.ERANGE) || len(buf) >= 1<<16 {
			return nil, err
		}
		buf = make([]byte, 4*len(buf))
	}
}

// dirPolicy returns the encryption policy of directory node d (backing
// descriptor dfd), nil if it has none. A policy that does not parse is an
// error naming the directory: new files there are refused rather than
// silently stored in plaintext, while existing files stay readable.
func (r *Root) dirPolicy(d *node, dfd int) (*objcrypt.Policy, error) {
	raw, err := getxattrAlloc(procPath(dfd), xattrPolicy)
	if errors.Is(err, unix.ENODATA) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read policy of %s: %w", d.relPath(), err)
	}
	pol, err := objcrypt.ParsePolicy(raw)
	if err != nil {
		r.log.Error("cryptds: unusable encryption policy; new files in this directory are refused",
			"dir", d.relPath(), "err", err)
		return nil, fmt.Errorf("policy of %s: %w", d.relPath(), err)
	}
	return pol, nil
}

// policyText is the value of the virtual user.cryptds.policy xattr.
func (r *Root) policyText(d *node, dfd int) string {
	pol, err := r.dirPolicy(d, dfd)
	switch {
	case err != nil:
		return "invalid " + err.Error()
	case pol == nil:
		return "none"
	}
	return fmt.Sprintf("encrypted kek=%s vm=%s", pol.KEKID, pol.VMID)
}

// setPolicy handles setxattr user.cryptds.policy on a directory: "encrypted"
// creates a KEK for the directory in the KMS and stores a new wrapped DEK;
// "none" removes the policy (only new files are affected either way).
// "rekey", "rekey-deep" and "shred" act on an existing policy (rekey.go).
func (r *Root) setPolicy(ctx context.Context, d *node, dfd int, value []byte) error {
	ctx, cancel := keyContext(ctx)
	defer cancel()
	v := strings.TrimSpace(string(value))
	switch v {
	case "none":
		err := unix.Removexattr(procPath(dfd), xattrPolicy)
		if err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove policy of %s: %w", d.relPath(), err)
		}
		r.log.Info("cryptds: encryption policy removed", "dir", d.relPath())
		return nil
	case "encrypted":
	case policyRekey, policyRekeyDeep:
		return r.rekey(ctx, d, dfd, v == policyRekeyDeep)
	case policyShred:
		return r.shred(ctx, d, dfd)
	default:
		return fmt.Errorf("policy value %q (want \"encrypted\", \"none\", \"rekey\", \"rekey-deep\" or \"shred\"): %w", v, syscall.EINVAL)
	}
	if _, err := unix.Getxattr(procPath(dfd), xattrPolicy, nil); err == nil {
		return fmt.Errorf("%s already has a policy: %w", d.relPath(), syscall.EEXIST)
	}
	name := "cryptds/" + r.cfg.DatastoreID + "/" + d.relPath()
	kekID, err := r.cfg.Keys.NewKEK(ctx, name)
	if err != nil {
		r.log.Error("cryptds: cannot create KEK", "dir", d.relPath(), "name", name, "err", err)
		return kmsError(fmt.Errorf("create KEK %s: %w", name, err))
	}
	kek, err := r.cfg.Keys.KEK(ctx, kekID)
	if err != nil {
		r.log.Error("cryptds: cannot fetch new KEK", "dir", d.relPath(), "kek", kekID, "err", err)
		return kmsError(fmt.Errorf("fetch KEK %s: %w", kekID, err))
	}
	defer kek.Zero()
	dek, err := objcrypt.NewDEK(r.rand)
	if err != nil {
		return err
	}
	defer dek.Zero()
	vm, err := objcrypt.NewVMID(r.rand)
	if err != nil {
		return err
	}
	wrapped, err := objcrypt.WrapDEK(kek, dek, kekID, vm, r.rand)
	if err != nil {
		return fmt.Errorf("wrap DEK for %s: %w", d.relPath(), err)
	}
	pol := &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: vm, KEKID: kekID, KMS: r.cfg.KMSName,
		WrappedDEK: wrapped, Created: time.Now().UTC()}
	raw, err := pol.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode policy for %s: %w", d.relPath(), err)
	}
	if err := unix.Setxattr(procPath(dfd), xattrPolicy, raw, unix.XATTR_CREATE); err != nil {
		return fmt.Errorf("store policy of %s: %w", d.relPath(), err)
	}
	r.log.Info("cryptds: directory encrypted", "dir", d.relPath(), "kek", kekID, "vm", vm.String())
	return nil
}

// statusText is the value of the virtual user.cryptds.status xattr: the
// regular files in the directory tree, counted by header presence.
func statusText(dfd int) (string, error) {
	var enc, plain int
	if err := countObjects(dfd, &enc, &plain); err != nil {
		return "", err
	}
	switch {
	case enc > 0 && plain > 0:
		return fmt.Sprintf("mixed encrypted=%d plain=%d", enc, plain), nil
	case enc > 0:
		return fmt.Sprintf("encrypted objects=%d", enc), nil
	}
	return fmt.Sprintf("plain objects=%d", plain), nil
}

// countObjects walks a backing tree with descriptors (no path length limit).
func countObjects(dfd int, enc, plain *int) error {
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return fmt.Errorf("read directory: %w", err)
		}
		if n == 0 {
			return nil
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				continue // raced with a delete
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if probeKind(procPathAt(fd, name)) == kindEncrypted {
					*enc++
				} else {
					*plain++
				}
			case unix.S_IFDIR:
				sub, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					continue
				}
				err = countObjects(sub, enc, plain)
				unix.Close(sub)
				if err != nil {
					return err
				}
			}
		}
	}
}
