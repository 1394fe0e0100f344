package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// DestroyKEK makes fakeKeys a KeyDestroyer: the key is gone for good.
func (k *fakeKeys) DestroyKEK(ctx context.Context, id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return k.fail
	}
	if key, ok := k.keys[id]; ok {
		key.Zero()
		delete(k.keys, id)
	}
	return nil
}

// LocateKEKs finds the fake KMS's keys by the name they were created with.
func (k *fakeKeys) LocateKEKs(ctx context.Context, name string) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var ids []string
	for id, n := range k.names {
		if _, ok := k.keys[id]; ok && n == name {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func (k *fakeKeys) has(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.keys[id]
	return ok
}

// backingHeaders reads both header copies of a backing file.
func backingHeaders(t *testing.T, path string) (x, region *objcrypt.Header) {
	t.Helper()
	raw, err := getxattrAlloc(path, xattrHeader)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if x, err = objcrypt.ParseHeader(raw); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return x, nil
	}
	if region, err = objcrypt.ParseRegion(b[:objcrypt.HeaderRegionSize]); err != nil {
		t.Fatal(err)
	}
	return x, region
}

func backingPolicy(t *testing.T, dir string) *objcrypt.Policy {
	t.Helper()
	raw, err := getxattrAlloc(dir, xattrPolicy)
	if err != nil {
		t.Fatal(err)
	}
	p, err := objcrypt.ParsePolicy(raw)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func setPolicyValue(path, v string) error { return unix.Setxattr(path, xattrPolicy, []byte(v), 0) }

// vmFiles creates a VM with a few objects (one empty, one in a
// subdirectory) and returns their plaintexts by relative path.
func vmFiles(t *testing.T, tf *testFS) map[string][]byte {
	t.Helper()
	tf.encDir("vm")
	if err := os.Mkdir(tf.m("vm/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"vm/disk":      randBytes(5*objcrypt.PlainBlockSize + 100),
		"vm/vmx":       []byte("config"),
		"vm/empty":     nil,
		"vm/sub/nvram": randBytes(3000),
	}
	for p, b := range files {
		mustWrite(t, tf.m(p), b)
	}
	return files
}

func TestShallowRekey(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	files := vmFiles(t, tf)
	old := backingPolicy(t, tf.b("vm"))
	bodies := map[string][]byte{}
	for p := range files {
		b, _ := os.ReadFile(tf.b(p))
		if len(b) > 0 {
			bodies[p] = b[objcrypt.HeaderRegionSize:]
		}
	}
	// A handle open across the rekey (the running VM) keeps working.
	h, err := os.OpenFile(tf.m("vm/disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	if err := setPolicyValue(tf.m("vm"), "rekey"); err != nil {
		t.Fatalf("rekey: %v", err)
	}
	np := backingPolicy(t, tf.b("vm"))
	if np.KEKID == old.KEKID || np.VMID != old.VMID || np.Rotated.IsZero() {
		t.Fatalf("policy after rekey: kek %s (was %s), vm %s (was %s), rotated %v", np.KEKID, old.KEKID, np.VMID, old.VMID, np.Rotated)
	}
	if sub := backingPolicy(t, tf.b("vm/sub")); sub.VMID != np.VMID || sub.KEKID != np.KEKID || !bytes.Equal(sub.WrappedDEK, np.WrappedDEK) {
		t.Errorf("subdirectory policy not rekeyed: kek %s", sub.KEKID)
	}
	for p := range files {
		x, reg := backingHeaders(t, tf.b(p))
		if x.KEKID != np.KEKID || !bytes.Equal(x.WrappedDEK, np.WrappedDEK) {
			t.Errorf("%s: header kek %s, want %s", p, x.KEKID, np.KEKID)
		}
		if reg != nil && !reg.Equal(x) {
			t.Errorf("%s: header copies disagree after rekey", p)
		}
		if b, ok := bodies[p]; ok {
			now, _ := os.ReadFile(tf.b(p))
			if !bytes.Equal(now[objcrypt.HeaderRegionSize:], b) {
				t.Errorf("%s: data bytes changed by a shallow rekey", p)
			}
		}
	}
	if _, err := h.WriteAt([]byte("live"), 10); err != nil {
		t.Fatalf("write on a handle opened before the rekey: %v", err)
	}
	copy(files["vm/disk"][10:], "live")
	h.Close()
	// The old KEK can go: everything opens under the new one.
	if err := tf.keys.DestroyKEK(context.Background(), old.KEKID); err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		if got := mustRead(t, tf.m(p)); !bytes.Equal(got, want) {
			t.Errorf("%s: plaintext changed", p)
		}
	}
	// A file created after the rekey gets the new KEK.
	mustWrite(t, tf.m("vm/new"), []byte("n"))
	if x, _ := backingHeaders(t, tf.b("vm/new")); x.KEKID != np.KEKID {
		t.Errorf("new file under kek %s", x.KEKID)
	}
}

func TestRekeyKMSDownChangesNothing(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	vmFiles(t, tf)
	before, _ := getxattrAlloc(tf.b("vm"), xattrPolicy)
	hdr, _ := getxattrAlloc(tf.b("vm/disk"), xattrHeader)
	tf.keys.setFail(errors.New("KMS unreachable"))
	for _, v := range []string{"rekey", "rekey-deep"} {
		if err := setPolicyValue(tf.m("vm"), v); !errors.Is(err, syscall.ENOKEY) {
			t.Errorf("%s with the KMS down: %v, want ENOKEY", v, err)
		}
	}
	tf.keys.setFail(nil)
	after, _ := getxattrAlloc(tf.b("vm"), xattrPolicy)
	hdr2, _ := getxattrAlloc(tf.b("vm/disk"), xattrHeader)
	if !bytes.Equal(before, after) || !bytes.Equal(hdr, hdr2) {
		t.Error("a failed rekey changed the policy or a header")
	}
}

// TestInterruptedRekeyRepaired builds what a crash between the region and
// the xattr write leaves (region under the new KEK, xattr under the old)
// and checks that open accepts it and repairs the region.
func TestInterruptedRekeyRepaired(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	files := vmFiles(t, tf)
	x, _ := backingHeaders(t, tf.b("vm/disk"))
	ctx := context.Background()
	dek, err := tf.root.unwrapHeader(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	newID, _ := tf.keys.NewKEK(ctx, "n")
	kek, _ := tf.keys.KEK(ctx, newID)
	nh := *x
	nh.KEKID = newID
	nh.WrappedDEK, err = objcrypt.WrapDEK(kek, dek, newID, x.VMID, nil)
	if err != nil {
		t.Fatal(err)
	}
	region, _ := nh.MarshalRegion()
	f, err := os.OpenFile(tf.b("vm/disk"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(region, 0)
	f.Close()
	if got := mustRead(t, tf.m("vm/disk")); !bytes.Equal(got, files["vm/disk"]) {
		t.Fatal("plaintext differs after a half-done rekey")
	}
	if xx, reg := backingHeaders(t, tf.b("vm/disk")); !xx.Equal(reg) {
		t.Errorf("region not repaired: %s", tf.logs.String())
	}
	if !strings.Contains(tf.logs.String(), "repaired the in-file header") {
		t.Error("repair not logged")
	}
	// A disagreement that is not a rekey (other DEK) still fails.
	other, _ := objcrypt.NewDEK(nil)
	nh.WrappedDEK, _ = objcrypt.WrapDEK(kek, other, newID, x.VMID, nil)
	region, _ = nh.MarshalRegion()
	f, _ = os.OpenFile(tf.b("vm/disk"), os.O_WRONLY, 0)
	f.WriteAt(region, 0)
	f.Close()
	if _, err := os.ReadFile(tf.m("vm/disk")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("open with copies under different DEKs: %v, want EIO", err)
	}
}

func TestDeepRekeyPolicy(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	files := vmFiles(t, tf)
	old := backingPolicy(t, tf.b("vm"))
	if err := setPolicyValue(tf.m("vm"), "rekey-deep"); err != nil {
		t.Fatal(err)
	}
	np := backingPolicy(t, tf.b("vm"))
	if np.KEKID == old.KEKID || np.VMID != old.VMID {
		t.Fatalf("deep rekey policy %+v", np)
	}
	// Objects keep their headers and stay readable until converted.
	if x, _ := backingHeaders(t, tf.b("vm/disk")); x.KEKID != old.KEKID {
		t.Errorf("deep rekey touched a header")
	}
	for p, want := range files {
		if got := mustRead(t, tf.m(p)); !bytes.Equal(got, want) {
			t.Errorf("%s changed", p)
		}
	}
	// New files use the new key and DEK; a copy's DEK differs from the old.
	mustWrite(t, tf.m("vm/new"), []byte("n"))
	x, _ := backingHeaders(t, tf.b("vm/new"))
	if x.KEKID != np.KEKID || !bytes.Equal(x.WrappedDEK, np.WrappedDEK) {
		t.Errorf("new object under %s", x.KEKID)
	}
	ctx := context.Background()
	d1, _ := tf.root.unwrapPolicy(ctx, old)
	d2, _ := tf.root.unwrapPolicy(ctx, np)
	if bytes.Equal(d1, d2) {
		t.Error("deep rekey kept the DEK")
	}
}

func TestShred(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	vmFiles(t, tf)
	old := backingPolicy(t, tf.b("vm"))
	if err := setPolicyValue(tf.m("vm"), "rekey"); err != nil {
		t.Fatal(err)
	}
	np := backingPolicy(t, tf.b("vm"))
	h, err := os.Open(tf.m("vm/disk")) // opened under the new KEK
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	w, err := os.OpenFile(tf.m("vm/vmx"), os.O_RDWR, 0) // a writer, as a running VM has
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Leave one header under the old KEK (a missed object): shred must
	// destroy that KEK too.
	mustWrite(t, tf.m("plainvm-file"), nil)
	if err := setPolicyValue(tf.m("vm"), "shred"); err != nil {
		t.Fatalf("shred: %v", err)
	}
	if tf.keys.has(np.KEKID) {
		t.Error("the VM's KEK survived the shred")
	}
	if tf.keys.has(old.KEKID) {
		t.Error("the VM's KEK from before the rekey survived the shred")
	}
	buf := make([]byte, 10)
	if _, err := h.ReadAt(buf, 0); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("read on an open handle after shred: %v, want EKEYREVOKED", err)
	}
	// Nothing changes a shredded object through a handle opened before.
	if err := w.Truncate(5000); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("ftruncate on an open handle after shred: %v, want EKEYREVOKED", err)
	}
	if err := unix.Fallocate(int(w.Fd()), 0, 0, 1<<20); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("fallocate on an open handle after shred: %v, want EKEYREVOKED", err)
	}
	if err := unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("punch hole on an open handle after shred: %v, want EKEYREVOKED", err)
	}
	for _, p := range []string{"vm/disk", "vm/vmx", "vm/sub/nvram"} {
		if _, err := os.ReadFile(tf.m(p)); !errors.Is(err, syscall.EKEYREVOKED) {
			t.Errorf("%s after shred: %v, want EKEYREVOKED", p, err)
		}
	}
	if !strings.Contains(tf.logs.String(), "key destroyed") || !strings.Contains(tf.logs.String(), np.KEKID) {
		t.Error("no log line naming the destroyed key")
	}
	// Plain files elsewhere are unaffected.
	if _, err := os.ReadFile(tf.m("plainvm-file")); err != nil {
		t.Error(err)
	}
}

func TestPolicyValuesOnPlainDir(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	if err := os.Mkdir(tf.m("p"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"rekey", "rekey-deep", "shred"} {
		if err := setPolicyValue(tf.m("p"), v); !errors.Is(err, syscall.ENODATA) {
			t.Errorf("%s on a plain directory: %v, want ENODATA", v, err)
		}
	}
	if err := setPolicyValue(tf.m("p"), "bogus"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("bogus value: %v", err)
	}
	_ = filepath.Join
}
