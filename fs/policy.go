package fs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	"golang.org/x/sys/unix"
)

// Backing xattr names. They are cryptds's own: hidden from listxattr
// through the mount and never settable through it.
const (
	xattrPrefix = "user.cryptds."
	xattrHeader = objcrypt.XattrHeader
	xattrPolicy = objcrypt.XattrPolicy
	xattrStatus = "user.cryptds.status"
	xattrKeys   = "user.cryptds.keys" // virtual, read-only: the VM's KEKs (vmguard.go keysText)
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

// policyText is the value of the virtual user.cryptds.policy xattr, as
// the mount's VM record sees the directory.
func (r *Root) policyText(d *node, dfd int) string {
	dv, err := r.dirVM(d, dfd)
	switch {
	case err != nil:
		return "invalid " + err.Error()
	case !dv.has || dv.vm.State == vmreg.Decrypted:
		return "none"
	}
	// A shredded VM is still an encrypted one (its key state says shredded).
	pol, err := dv.vm.ParsedPolicy()
	if err != nil {
		return "invalid " + err.Error()
	}
	return fmt.Sprintf("encrypted kek=%s vm=%s", pol.KEKID, pol.VMID)
}

// setPolicy handles setxattr user.cryptds.policy on a directory: "encrypted"
// creates a VM (new VM id, a KEK for it in the KMS, a new wrapped DEK) and
// records it; "none" decrypts it (new files plain; the VM's own encrypted
// objects stay readable there until converted). "rekey", "rekey-deep" and
// "shred" act on an existing VM (rekey.go). Only root may (requireAdmin).
func (r *Root) setPolicy(ctx context.Context, d *node, dfd int, value []byte) error {
	ctx, cancel := keyContext(ctx)
	defer cancel()
	v := strings.TrimSpace(string(value))
	switch v {
	case "none", "encrypted", policyRekey, policyRekeyDeep, policyShred:
	default:
		return fmt.Errorf("policy value %q (want \"encrypted\", \"none\", \"rekey\", \"rekey-deep\" or \"shred\"): %w", v, syscall.EINVAL)
	}
	if err := r.requireAdmin(ctx, d, "policy "+v); err != nil {
		return err
	}
	switch v {
	case "none":
		return r.removePolicy(d, dfd)
	case policyRekey, policyRekeyDeep:
		return r.rekey(ctx, d, dfd, v == policyRekeyDeep)
	case policyShred:
		return r.shred(ctx, d, dfd)
	}
	return r.encryptDir(ctx, d, dfd)
}

// removePolicy is "none": the VM directory's record becomes Decrypted and
// its policy xattr goes. On a subdirectory of an encrypted VM it is
// refused (a VM is decrypted as a whole, from its directory); on a
// subdirectory of a decrypted VM it just removes the xattr (vm decrypt
// does that for every subdirectory).
func (r *Root) removePolicy(d *node, dfd int) error {
	dv, err := r.dirVM(d, dfd)
	if err != nil && !errors.Is(err, errCopiedPolicy) && !errors.Is(err, objcrypt.ErrHeader) {
		return err
	}
	rel := d.relPath()
	if dv.has && dv.vm.Dir != rel && dv.vm.State == vmreg.Encrypted {
		return fmt.Errorf("%s is part of encrypted VM %s: decrypt the VM directory itself: %w", rel, dv.vm.Dir, syscall.EINVAL)
	}
	if err := unix.Removexattr(procPath(dfd), xattrPolicy); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove policy of %s: %w", rel, err)
	}
	if dv.has && dv.vm.Dir == rel && dv.vm.State == vmreg.Encrypted {
		vm := dv.vm
		vm.State = vmreg.Decrypted
		if err := r.vms.Put(vm, false); err != nil {
			return fmt.Errorf("record %s as decrypted: %w", rel, err)
		}
	}
	r.log.Info("cryptds: encryption policy removed", "dir", rel)
	return nil
}

// encryptDir is "encrypted": a new VM for directory d. Its subdirectories
// get the policy too (the mount does what mkdir does for new ones).
func (r *Root) encryptDir(ctx context.Context, d *node, dfd int) error {
	rel := d.relPath()
	dv, err := r.dirVM(d, dfd)
	if err != nil {
		return err
	}
	replace := false
	if dv.has {
		if dv.vm.State != vmreg.Decrypted || dv.vm.Dir != rel {
			return fmt.Errorf("%s already belongs to VM %s (%s, %s): %w", rel, dv.vm.ID, dv.vm.Dir, dv.vm.State, syscall.EEXIST)
		}
		replace = true // encrypted again after a decrypt: a new VM id and key
	}
	vm, err := objcrypt.NewVMID(r.rand)
	if err != nil {
		return err
	}
	name := objcrypt.KEKName(r.cfg.DatastoreID, vm)
	kekID, err := r.cfg.Keys.NewKEK(ctx, name)
	if err != nil {
		r.log.Error("cryptds: cannot create KEK", "dir", rel, "name", name, "err", err)
		return kmsError(fmt.Errorf("create KEK %s: %w", name, err))
	}
	kek, err := r.cfg.Keys.KEK(ctx, kekID)
	if err != nil {
		r.log.Error("cryptds: cannot fetch new KEK", "dir", rel, "kek", kekID, "err", err)
		return kmsError(fmt.Errorf("fetch KEK %s: %w", kekID, err))
	}
	defer kek.Zero()
	dek, err := objcrypt.NewDEK(r.rand)
	if err != nil {
		return err
	}
	defer dek.Zero()
	wrapped, err := objcrypt.WrapDEK(kek, dek, kekID, vm, r.rand)
	if err != nil {
		return fmt.Errorf("wrap DEK for %s: %w", rel, err)
	}
	now := time.Now().UTC()
	pol := &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: vm, KEKID: kekID, KMS: r.cfg.KMSName,
		WrappedDEK: wrapped, Created: now}
	raw, err := pol.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode policy for %s: %w", rel, err)
	}
	// Record first: from here on the directory is encrypted for this
	// mount, whatever happens to the xattrs below.
	rec := vmreg.VM{ID: vm, Dir: rel, State: vmreg.Encrypted, Policy: raw, KEKs: []vmreg.KEK{{ID: kekID, Since: now}}}
	if err := r.vms.Put(rec, replace); err != nil {
		return fmt.Errorf("record VM %s at %s: %w", vm, rel, err)
	}
	if err := r.storeVMPolicy(dfd, rel, vm, raw); err != nil {
		return err
	}
	r.log.Info("cryptds: directory encrypted", "dir", rel, "kek", kekID, "vm", vm.String())
	return nil
}

// storeVMPolicy writes policy raw of VM vm on the directory tree dfd (rel)
// and every subdirectory that belongs to vm (not those of a VM recorded
// below it).
func (r *Root) storeVMPolicy(dfd int, rel string, vm objcrypt.VMID, raw []byte) error {
	return walkTree(dfd, rel, func(dirfd int, name, crel string, st *unix.Stat_t) error {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		if v, ok := r.vms.Lookup(crel); !ok || v.ID != vm {
			return nil
		}
		if err := unix.Setxattr(procPathAt(dirfd, name), xattrPolicy, raw, 0); err != nil {
			return fmt.Errorf("store policy of %s: %w", crel, err)
		}
		return nil
	})
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
