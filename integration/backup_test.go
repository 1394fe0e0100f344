//go:build integration

package integration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// backupVM makes an encrypted VM (sparse disk, config, log, snapshot delta
// in a subdirectory, empty NVRAM) on the mount and returns its dir and the
// sha256 of every file as read through the mount.
func backupVM(t *testing.T, mnt, name, tag string) (string, map[string][32]byte) {
	t.Helper()
	vm := mkVMDir(t, mnt, name, true)
	makeVM(t, mnt, name, tag, 64<<20, 4)
	return vm, treeSums(t, vm)
}

// TestBackup reads an encrypted VM over the mount with unmodified tar,
// rsync and restic: the copies are the plaintext, byte for byte. Restoring
// them into an encrypted VM dir lands encrypted on the backing store; into
// a plain dir, plain (the target's policy wins).
func TestBackup(t *testing.T) {
	for _, c := range []string{"tar", "rsync", "restic"} {
		require(t, haveCmd(c), c)
	}
	backing, mnt, _ := kmsMount(t)
	const tag = "CRYPTDS-BACKUP-PLAINTEXT"
	vm, want := backupVM(t, mnt, "vm-src", tag)
	requireEncryptedBacking(t, filepath.Join(backing, "vm-src"), []byte(tag))

	work := t.TempDir() // on the host's ext4, outside the mount
	tarball := filepath.Join(work, "vm.tar")
	rsyncCopy := filepath.Join(work, "rsync") + "/"
	repo := filepath.Join(work, "restic-repo")
	resticEnv := []string{"RESTIC_PASSWORD=cryptds-it", "RESTIC_REPOSITORY=" + repo}

	// Backups over the mount are cleartext.
	t.Run("backup", func(t *testing.T) {
		for _, step := range []struct {
			name string
			do   func(t *testing.T) string // returns the dir holding the copy
		}{
			{"tar -c", func(t *testing.T) string {
				run(t, "tar", "-C", mnt, "-cf", tarball, "vm-src")
				x := filepath.Join(work, "tar-x")
				if err := os.Mkdir(x, 0o755); err != nil {
					t.Fatal(err)
				}
				run(t, "tar", "-C", x, "-xf", tarball)
				return filepath.Join(x, "vm-src")
			}},
			{"rsync -a", func(t *testing.T) string {
				run(t, "rsync", "-a", vm+"/", rsyncCopy)
				return rsyncCopy
			}},
			{"restic backup", func(t *testing.T) string {
				runIn(t, "", resticEnv, "restic", "init", "--no-cache")
				runIn(t, vm, resticEnv, "restic", "backup", "--no-cache", ".")
				runIn(t, "", resticEnv, "restic", "check", "--no-cache")
				x := filepath.Join(work, "restic-x")
				runIn(t, "", resticEnv, "restic", "restore", "--no-cache", "latest", "--target", x)
				return x
			}},
		} {
			t.Run(step.name, func(t *testing.T) {
				start := time.Now()
				dir := step.do(t)
				t.Logf("%v", time.Since(start).Round(time.Millisecond))
				sameSums(t, step.name+" copy vs the VM read through the mount", treeSums(t, dir), want)
			})
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// Restores: into an encrypted VM dir and into a plain dir, per tool.
	restores := []struct {
		tool string
		do   func(t *testing.T, target string)
	}{
		{"tar", func(t *testing.T, target string) {
			run(t, "tar", "-C", target, "--strip-components=1", "-xf", tarball)
		}},
		{"rsync", func(t *testing.T, target string) { run(t, "rsync", "-a", rsyncCopy, target+"/") }},
		{"restic", func(t *testing.T, target string) {
			runIn(t, "", resticEnv, "restic", "restore", "--no-cache", "latest", "--target", target)
		}},
	}
	for _, r := range restores {
		for _, enc := range []bool{true, false} {
			name := "restore-" + r.tool + map[bool]string{true: "-encrypted", false: "-plain"}[enc]
			t.Run(name, func(t *testing.T) {
				target := mkVMDir(t, mnt, name, enc)
				r.do(t, target)
				sameSums(t, name, treeSums(t, target), want)
				if enc {
					requireEncryptedBacking(t, filepath.Join(backing, name), []byte(tag))
				} else {
					requirePlainBacking(t, filepath.Join(backing, name), []byte(tag))
				}
			})
		}
	}
}

// ciphertextCopies are ways to copy a backing VM dir to another datastore.
var ciphertextCopies = []struct {
	name   string
	xattrs bool
	copy   func(t *testing.T, srcDS, vm, dstDS, scratch string)
}{
	{"tar --xattrs", true, func(t *testing.T, srcDS, vm, dstDS, scratch string) {
		tb := filepath.Join(scratch, "ct-x.tar")
		run(t, "tar", "--xattrs", "--xattrs-include=user.*", "-C", srcDS, "-cf", tb, vm)
		run(t, "tar", "--xattrs", "--xattrs-include=user.*", "-C", dstDS, "-xf", tb)
	}},
	{"rsync -aX", true, func(t *testing.T, srcDS, vm, dstDS, scratch string) {
		run(t, "rsync", "-aX", filepath.Join(srcDS, vm), dstDS+"/")
	}},
	{"tar without xattrs", false, func(t *testing.T, srcDS, vm, dstDS, scratch string) {
		tb := filepath.Join(scratch, "ct-nox.tar")
		run(t, "tar", "--no-xattrs", "-C", srcDS, "-cf", tb, vm)
		run(t, "tar", "--no-xattrs", "-C", dstDS, "-xf", tb)
	}},
	{"rsync -a without xattrs", false, func(t *testing.T, srcDS, vm, dstDS, scratch string) {
		run(t, "rsync", "-a", filepath.Join(srcDS, vm), dstDS+"/")
	}},
}

// TestBackupCiphertext copies the BACKING VM dir (ciphertext) to a second
// datastore and mounts it with the same KMS. With xattrs the plaintext is
// identical at once. Without xattrs the mount must refuse the objects (EIO,
// never ciphertext served as plaintext) until `cryptds fsck
// --restore-xattrs` has put the headers back from the in-file copy.
func TestBackupCiphertext(t *testing.T) {
	for _, c := range []string{"tar", "rsync"} {
		require(t, haveCmd(c), c)
	}
	backing, mnt, _ := kmsMount(t)
	const tag = "CRYPTDS-CTBACKUP-PLAINTEXT"
	_, want := backupVM(t, mnt, "vm-ct", tag)

	for _, c := range ciphertextCopies {
		t.Run(c.name, func(t *testing.T) {
			ds2, mnt2, _ := dirs(t)
			c.copy(t, backing, "vm-ct", ds2, t.TempDir())
			back := filepath.Join(ds2, "vm-ct")
			searchBacking(t, back, []byte(tag))
			if c.xattrs {
				m2 := remount(t, ds2, mnt2)
				sameSums(t, c.name+" copy mounted", treeSums(t, filepath.Join(mnt2, "vm-ct")), want)
				requirePolicy(t, filepath.Join(mnt2, "vm-ct"))
				m2.stop()
				fsck := append(append([]string{"fsck"}, needPyKMIP(t).flags()...), "--state-dir", t.TempDir(), ds2)
				if out, code := runCode(5*time.Minute, "", nil, binary, fsck...); code != 0 {
					t.Errorf("cryptds fsck of the %s copy: exit %d, want 0 (clean)\n%s", c.name, code, out)
				}
				return
			}

			// As copied: the header xattrs are gone. The fs must refuse
			// the objects rather than serve ciphertext as plaintext.
			for rel := range want {
				if hasXattr(filepath.Join(back, rel), "user.cryptds.hdr") {
					t.Fatalf("%s kept the header xattr on %s: not an xattr-less copy", c.name, rel)
				}
			}
			m2 := remount(t, ds2, mnt2)
			for rel := range want {
				b, err := os.ReadFile(filepath.Join(mnt2, "vm-ct", rel))
				if !errors.Is(err, syscall.EIO) {
					t.Errorf("read %s from the xattr-less copy: %d bytes, err %v; want EIO", rel, len(b), err)
				}
			}
			m2.stop()

			fsck := append([]string{"fsck"}, needPyKMIP(t).flags()...)
			fsck = append(fsck, "--state-dir", t.TempDir())
			out, code := runCode(5*time.Minute, "", nil, binary, append(fsck, "--restore-xattrs", ds2)...)
			if strings.Contains(out, "No help topic for 'fsck'") || strings.Contains(out, "command not found") {
				t.Fatalf("`cryptds fsck --restore-xattrs` does not exist yet (exit %d): %s", code, strings.TrimSpace(out))
			}
			if code != 0 {
				t.Fatalf("cryptds fsck --restore-xattrs %s: exit %d\n%s", ds2, code, out)
			}
			t.Logf("fsck --restore-xattrs:\n%s", out)
			requireEncryptedBacking(t, back, []byte(tag))
			if out, code := runCode(5*time.Minute, "", nil, binary, append(fsck, ds2)...); code != 0 {
				t.Errorf("cryptds fsck after --restore-xattrs: exit %d, want 0 (clean)\n%s", code, out)
			}
			m2 = remount(t, ds2, mnt2)
			sameSums(t, c.name+" copy after fsck --restore-xattrs", treeSums(t, filepath.Join(mnt2, "vm-ct")), want)
			// The VM must be whole again: its dir policy back, so what the
			// VM writes next (a new snapshot delta) is encrypted too.
			requirePolicy(t, filepath.Join(mnt2, "vm-ct"))
			if err := os.WriteFile(filepath.Join(mnt2, "vm-ct", "new-delta.qcow2"), []byte(tag+"-NEW"), 0o600); err != nil {
				t.Fatal(err)
			}
			if !hasXattr(filepath.Join(back, "new-delta.qcow2"), "user.cryptds.hdr") {
				out, _, _ := cli(t, "vm", "status", filepath.Join(mnt2, "vm-ct"))
				t.Errorf("a file written into the restored VM after fsck --restore-xattrs is stored PLAIN on the backing store (the VM dir's policy xattr was not restored); vm status:\n%s", out)
			}
			m2.stop()
		})
	}
}

// requirePolicy checks that the VM dir reports an encryption policy.
func requirePolicy(t *testing.T, vm string) {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(vm, "user.cryptds.policy", buf)
	if err != nil || !strings.HasPrefix(string(buf[:max(n, 0)]), "encrypted") {
		t.Errorf("policy of %s: %q, %v; want encrypted", vm, buf[:max(n, 0)], err)
	}
}
