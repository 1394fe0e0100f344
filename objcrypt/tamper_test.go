package objcrypt

// Tamper tests: one per line of docs/THREAT-MODEL.md. An attacker who can
// read and write the backing store (but not host memory or the KMS) edits the
// ciphertext; each test asserts either that the edit is rejected (ErrAuth or
// ErrHeader, for the touched block only) or, for the documented gaps, that it
// is NOT detected, so the gap can never silently change.

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// tamperFile is an encrypted object as it sits on the backing store.
type tamperFile struct {
	vm     *testVM
	o      *Object
	hdr    *Header
	xattr  []byte // user.cryptds.hdr
	file   []byte // region ‖ blocks
	plain  []byte
	blocks uint64
}

// holeBlock is the block of newTamperFile left sparse.
const holeBlock = 2

// newTamperFile builds a 4-block object: two full data blocks, a hole, and
// a 1000-byte partial last block.
func newTamperFile(t *testing.T, vm *testVM, seed string) *tamperFile {
	t.Helper()
	o, h := vm.newObject(t, seed)
	f := &tamperFile{vm: vm, o: o, hdr: h, blocks: 4}
	var err error
	if f.xattr, err = h.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	if f.file, err = h.MarshalRegion(); err != nil {
		t.Fatal(err)
	}
	f.plain = randPlain(seed, 3*PlainBlockSize+1000)
	clear(f.plain[holeBlock*PlainBlockSize : (holeBlock+1)*PlainBlockSize])
	for b := range f.blocks {
		pb := f.plain[b*PlainBlockSize : min((b+1)*PlainBlockSize, uint64(len(f.plain)))]
		if b == holeBlock {
			f.file = append(f.file, make([]byte, CipherBlockSize)...)
			continue
		}
		if f.file, err = o.EncryptBlock(f.file, pb, b); err != nil {
			t.Fatal(err)
		}
	}
	if uint64(len(f.file)) != CipherSizeFromPlain(uint64(len(f.plain))) {
		t.Fatal("test file has the wrong size")
	}
	return f
}

// span returns [from, to) of block b inside a backing file of size n.
func span(b uint64, n int) (int, int) {
	from := int(CipherOffsetOfBlock(b))
	return from, min(from+CipherBlockSize, n)
}

// open decrypts a backing file + xattr the way fs/ does: parse and compare
// both header copies, unwrap the DEK with the VM's KEK, derive the object
// key, and decrypt every block. It returns the plaintext, or the first
// error.
func open(vm *testVM, xattr, file []byte) ([]byte, error) {
	hx, err := ParseHeader(xattr)
	if err != nil {
		return nil, err
	}
	if len(file) < HeaderRegionSize {
		return nil, fmt.Errorf("file of %d bytes: %w", len(file), ErrHeader)
	}
	hr, err := ParseRegion(file[:HeaderRegionSize])
	if err != nil {
		return nil, err
	}
	if !hx.Equal(hr) {
		return nil, fmt.Errorf("xattr and in-file header disagree: %w", ErrHeader)
	}
	if _, err := PlainSizeFromCipher(uint64(len(file))); err != nil {
		return nil, err
	}
	dek, err := UnwrapDEK(vm.kek, hx.WrappedDEK, hx.KEKID, hx.VMID)
	if err != nil {
		return nil, err
	}
	o, err := NewObject(dek, hx.ObjectID, nil)
	if err != nil {
		return nil, err
	}
	return o.DecryptBlocks(nil, file[HeaderRegionSize:], 0, nil)
}

// onlyBlockFails asserts that block bad of file fails with ErrAuth while
// its neighbours decrypt to the right plaintext, and that a whole-file read
// stops exactly at bad.
func (f *tamperFile) onlyBlockFails(t *testing.T, file []byte, bad uint64, full bool) {
	t.Helper()
	for b := range f.blocks {
		if b != bad && (!full && b+1 != bad && b != bad+1) {
			continue
		}
		from, to := span(b, len(file))
		got, err := f.o.DecryptBlock(nil, file[from:to], b)
		if b == bad {
			mustBlockErr(t, err, b, ErrAuth)
			if len(got) != 0 {
				t.Fatal("a failed block returned plaintext")
			}
			continue
		}
		want := f.plain[b*PlainBlockSize : min((b+1)*PlainBlockSize, uint64(len(f.plain)))]
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("neighbour block %d of tampered block %d: %v", b, bad, err)
		}
	}
	if full {
		got, err := f.o.DecryptBlocks(nil, file[HeaderRegionSize:], 0, nil)
		mustBlockErr(t, err, bad, ErrAuth)
		if !bytes.Equal(got, f.plain[:bad*PlainBlockSize]) {
			t.Fatal("whole-file read did not return exactly the blocks before the bad one")
		}
	}
}

// Protected: per-block integrity. Flipping any bit of a block's ciphertext
// fails that block only (the hole block included: garbage in a hole is not
// zeros).
func TestTamperFlipBlockBit(t *testing.T) {
	f := newTamperFile(t, newTestVM(t, "tamper"), "flip")
	for b := range f.blocks {
		from, to := span(b, len(f.file))
		for i := from + NonceSize; i < to-TagSize; i++ {
			bits := []int{i % 8}
			if i < from+NonceSize+2 || i >= to-TagSize-2 {
				bits = []int{0, 1, 2, 3, 4, 5, 6, 7} // every bit at the edges
			}
			for _, bit := range bits {
				file := bytes.Clone(f.file)
				file[i] ^= 1 << bit
				f.onlyBlockFails(t, file, b, i == from+NonceSize+100)
			}
		}
	}
}

// Protected: flipping any bit of a block's nonce fails that block only.
func TestTamperFlipNonceBit(t *testing.T) {
	f := newTamperFile(t, newTestVM(t, "tamper"), "nonce")
	for b := range f.blocks {
		from, _ := span(b, len(f.file))
		for bit := range NonceSize * 8 {
			file := bytes.Clone(f.file)
			file[from+bit/8] ^= 1 << (bit % 8)
			f.onlyBlockFails(t, file, b, bit == 0)
		}
	}
}

// Protected: flipping any bit of a block's tag fails that block only.
func TestTamperFlipTagBit(t *testing.T) {
	f := newTamperFile(t, newTestVM(t, "tamper"), "tag")
	for b := range f.blocks {
		_, to := span(b, len(f.file))
		for bit := range TagSize * 8 {
			file := bytes.Clone(f.file)
			file[to-TagSize+bit/8] ^= 1 << (bit % 8)
			f.onlyBlockFails(t, file, b, bit == 0)
		}
	}
}

// Protected: blocks cannot be swapped or reordered within a file (the block
// number is in the AAD).
func TestTamperSwapBlocks(t *testing.T) {
	f := newTamperFile(t, newTestVM(t, "tamper"), "swap")
	file := bytes.Clone(f.file)
	a0, a1 := span(0, len(file))
	b0, b1 := span(1, len(file))
	tmp := bytes.Clone(file[a0:a1])
	copy(file[a0:a1], file[b0:b1])
	copy(file[b0:b1], tmp)
	for _, b := range []uint64{0, 1} {
		from, to := span(b, len(file))
		_, err := f.o.DecryptBlock(nil, file[from:to], b)
		mustBlockErr(t, err, b, ErrAuth)
	}
	// a full block copied over another position (duplication) fails too
	file = bytes.Clone(f.file)
	copy(file[b0:b1], f.file[a0:a1])
	f.onlyBlockFails(t, file, 1, true)
	// and any stored block presented under any other block number fails
	for b := range f.blocks {
		if b == holeBlock {
			continue
		}
		from, to := span(b, len(f.file))
		for _, other := range []uint64{b + 1, b ^ 1, b + 1<<32, 1 << 63} {
			_, err := f.o.DecryptBlock(nil, f.file[from:to], other)
			mustBlockErr(t, err, other, ErrAuth)
		}
	}
}

// Protected: a block cannot be moved to another object, of the same VM
// (same DEK, other object id) or of another VM, even at the same position.
func TestTamperMoveBlockBetweenObjects(t *testing.T) {
	vm := newTestVM(t, "tamper")
	a := newTamperFile(t, vm, "move-a")
	b := newTamperFile(t, vm, "move-b")
	c := newTamperFile(t, newTestVM(t, "tamper-other-vm"), "move-c")
	for _, src := range []*tamperFile{b, c} {
		file := bytes.Clone(a.file)
		from, to := span(1, len(file))
		copy(file[from:to], src.file[from:to])
		a.onlyBlockFails(t, file, 1, true)
	}
}

// Protected: splicing a header from another object onto a file's data
// fails every data block; an xattr that disagrees with the in-file copy is
// refused before any key is used.
func TestTamperSpliceHeaders(t *testing.T) {
	vm := newTestVM(t, "tamper")
	a := newTamperFile(t, vm, "splice-a")
	b := newTamperFile(t, vm, "splice-b")
	// both copies of B's header on A's blocks: the DEK unwraps (same VM),
	// but B's object key and AAD do not fit A's blocks
	file := append(bytes.Clone(b.file[:HeaderRegionSize]), a.file[HeaderRegionSize:]...)
	_, err := open(vm, b.xattr, file)
	mustBlockErr(t, err, 0, ErrAuth)
	// every data block fails on its own, the hole still reads as zeros
	hb, _ := ParseHeader(b.xattr)
	ob, _ := NewObject(vm.dek, hb.ObjectID, nil)
	for blk := range a.blocks {
		from, to := span(blk, len(file))
		got, err := ob.DecryptBlock(nil, file[from:to], blk)
		if blk == holeBlock {
			if err != nil || !isZero(got) {
				t.Fatalf("hole under a spliced header: %v", err)
			}
			continue
		}
		mustBlockErr(t, err, blk, ErrAuth)
	}
	// xattr from B, region from A (or the reverse): refused
	for _, c := range []struct{ xattr, file []byte }{{b.xattr, a.file}, {a.xattr, file}} {
		if _, err := open(vm, c.xattr, c.file); !errors.Is(err, ErrHeader) {
			t.Fatalf("mismatched header copies: %v, want ErrHeader", err)
		}
	}
	// a header from another VM on A's data: its KEK (which the attacker's
	// VM may legitimately use) unwraps a different DEK; A's blocks fail
	other := newTestVM(t, "tamper-other-vm")
	c := newTamperFile(t, other, "splice-c")
	file = append(bytes.Clone(c.file[:HeaderRegionSize]), a.file[HeaderRegionSize:]...)
	_, err = open(other, c.xattr, file)
	mustBlockErr(t, err, 0, ErrAuth)
}

// Protected: header tampering. No single-bit change of the header (xattr and
// region changed alike) lets the data decrypt: it fails to parse, fails to
// unwrap, or fails every data block.
func TestTamperHeader(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "header")
	if got, err := open(vm, f.xattr, f.file); err != nil || !bytes.Equal(got, f.plain) {
		t.Fatalf("untampered open: %v", err)
	}
	outcomes := map[string]int{}
	for bit := range len(f.xattr) * 8 {
		x := bytes.Clone(f.xattr)
		x[bit/8] ^= 1 << (bit % 8)
		file := bytes.Clone(f.file)
		copy(file, x)
		if len(x) < HeaderRegionSize {
			clear(file[len(x):HeaderRegionSize])
		}
		got, err := open(vm, x, file)
		switch {
		case err == nil:
			t.Fatalf("flipping header bit %d still decrypts (%d bytes)", bit, len(got))
		case errors.Is(err, ErrVersion):
			outcomes["ErrVersion"]++
		case errors.Is(err, ErrHeader):
			outcomes["ErrHeader"]++
		case errors.Is(err, ErrAuth):
			var be *BlockError
			if errors.As(err, &be) {
				outcomes["ErrAuth block"]++
			} else {
				outcomes["ErrAuth unwrap"]++
			}
		default:
			t.Fatalf("flipping header bit %d: unexpected error %v", bit, err)
		}
	}
	// each defence must actually have been exercised
	for _, k := range []string{"ErrVersion", "ErrHeader", "ErrAuth block", "ErrAuth unwrap"} {
		if outcomes[k] == 0 {
			t.Errorf("no header bit flip ended in %s: %v", k, outcomes)
		}
	}
}

// Protected: the wrong DEK (e.g. a stale cache entry) fails every data
// block, never returns garbage.
func TestTamperWrongDEK(t *testing.T) {
	f := newTamperFile(t, newTestVM(t, "tamper"), "wrongdek")
	other := newTestVM(t, "tamper-other-vm")
	o, err := NewObject(other.dek, f.hdr.ObjectID, nil)
	if err != nil {
		t.Fatal(err)
	}
	for b := range f.blocks {
		from, to := span(b, len(f.file))
		got, err := o.DecryptBlock(nil, f.file[from:to], b)
		if b == holeBlock {
			if err != nil || !isZero(got) {
				t.Fatalf("hole: %v", err)
			}
			continue
		}
		mustBlockErr(t, err, b, ErrAuth)
	}
}

// Protected: a truncated header (xattr or in-file region) is malformed.
func TestTamperTruncatedHeader(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "trunchdr")
	for n := range len(f.xattr) {
		if _, err := open(vm, f.xattr[:n], f.file); !errors.Is(err, ErrHeader) {
			t.Fatalf("xattr cut to %d bytes: %v, want ErrHeader", n, err)
		}
	}
	for _, n := range []int{0, 1, len(f.xattr) - 1, len(f.xattr), HeaderRegionSize - 1} {
		if _, err := open(vm, f.xattr, f.file[:n]); !errors.Is(err, ErrHeader) {
			t.Fatalf("file cut to %d bytes: %v, want ErrHeader", n, err)
		}
		if _, err := PlainSizeFromCipher(uint64(n)); !errors.Is(err, ErrHeader) {
			t.Fatalf("PlainSizeFromCipher(%d): %v, want ErrHeader", n, err)
		}
	}
}

// Protected: cutting a file inside a block. A fragment of 1..32 bytes is
// malformed (ErrHeader); a longer cut fails the shortened block (its tag
// moved, and its length is authenticated).
func TestTamperTruncateInsideBlock(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "truncblk")
	start := int(CipherOffsetOfBlock(1))
	for cut := 1; cut < CipherBlockSize; cut += 37 {
		_, err := open(vm, f.xattr, f.file[:start+cut])
		if cut <= BlockOverhead {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("cut %d bytes into block 1: %v, want ErrHeader", cut, err)
			}
			continue
		}
		mustBlockErr(t, err, 1, ErrAuth)
	}
	// the partial last block shortened by one byte
	_, err := open(vm, f.xattr, f.file[:len(f.file)-1])
	mustBlockErr(t, err, 3, ErrAuth)
	// or extended by one byte
	_, err = open(vm, f.xattr, append(bytes.Clone(f.file), 0))
	mustBlockErr(t, err, 3, ErrAuth)
}

// NOT detected (documented): rolling a block back to an older version of the
// same block. Both versions authenticate under the same key, number and
// object id; nothing records which is current.
func TestNotDetectedBlockRollback(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "rollback")
	from, to := span(1, len(f.file))
	old := bytes.Clone(f.file[from:to])
	newPlain := randPlain("v2", PlainBlockSize)
	s, err := f.o.EncryptBlock(nil, newPlain, 1)
	if err != nil {
		t.Fatal(err)
	}
	copy(f.file[from:to], s) // the legitimate write
	copy(f.file[from:to], old)
	got, err := open(vm, f.xattr, f.file)
	if err != nil || !bytes.Equal(got, f.plain) {
		t.Fatalf("block rollback: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
}

// NOT detected (documented): zeroing a whole stored block turns it into a
// hole, which reads as 4096 zero bytes.
func TestNotDetectedZeroBlockIntoHole(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "zero")
	for _, b := range []uint64{1, 3} { // a full block and the partial last one
		from, to := span(b, len(f.file))
		clear(f.file[from:to])
		clear(f.plain[b*PlainBlockSize : min((b+1)*PlainBlockSize, uint64(len(f.plain)))])
	}
	got, err := open(vm, f.xattr, f.file)
	if err != nil || !bytes.Equal(got, f.plain) {
		t.Fatalf("zeroed blocks: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
}

// NOT detected (documented): appending all-zero blocks grows the file with
// zeros, like a sparse extension.
func TestNotDetectedZeroExtension(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "extend")
	// replace the partial last block by a full hole, then add two holes
	file := append(bytes.Clone(f.file[:CipherOffsetOfBlock(3)]), make([]byte, 3*CipherBlockSize)...)
	got, err := open(vm, f.xattr, file)
	want := append(bytes.Clone(f.plain[:3*PlainBlockSize]), make([]byte, 3*PlainBlockSize)...)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("zero extension: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
}

// NOT detected (documented): truncation at a block boundary. The format has
// no length field and no last-block marker, so a shorter file is
// indistinguishable from a file that was written shorter.
func TestNotDetectedTruncateAtBlockBoundary(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "truncate")
	for b := range f.blocks {
		got, err := open(vm, f.xattr, f.file[:CipherOffsetOfBlock(b)])
		if err != nil || !bytes.Equal(got, f.plain[:b*PlainBlockSize]) {
			t.Fatalf("truncation to %d blocks: %v; the documented gap changed, update THREAT-MODEL.md", b, err)
		}
	}
}

// NOT detected (documented): swapping whole files (backing file and xattr
// together) between two objects of the same VM, or rolling a whole file back
// to an older copy. The path is not bound into the header.
func TestNotDetectedWholeFileSwap(t *testing.T) {
	vm := newTestVM(t, "tamper")
	a := newTamperFile(t, vm, "whole-a")
	b := newTamperFile(t, vm, "whole-b")
	// "a" now holds b's bytes and vice versa
	if got, err := open(vm, b.xattr, b.file); err != nil || !bytes.Equal(got, b.plain) {
		t.Fatalf("swapped file: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
	if got, err := open(vm, a.xattr, a.file); err != nil || !bytes.Equal(got, a.plain) {
		t.Fatalf("swapped file: %v", err)
	}
	// whole-file rollback: keep a copy, rewrite a block, put the copy back
	oldFile := bytes.Clone(a.file)
	from, to := span(0, len(a.file))
	s, _ := a.o.EncryptBlock(nil, randPlain("new", PlainBlockSize), 0)
	copy(a.file[from:to], s)
	if got, err := open(vm, a.xattr, oldFile); err != nil || !bytes.Equal(got, a.plain) {
		t.Fatalf("whole-file rollback: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
}

// NOT protected (documented): metadata visible without any key. The
// plaintext size follows from the backing size, and the header shows which
// VM (VM id), which KEK and which object each file belongs to. (File and
// directory names are the same as on the mount by design: see DESIGN.md.)
func TestNotProtectedMetadataVisible(t *testing.T) {
	vm := newTestVM(t, "tamper")
	f := newTamperFile(t, vm, "meta")
	size, err := PlainSizeFromCipher(uint64(len(f.file)))
	if err != nil || size != uint64(len(f.plain)) {
		t.Fatalf("plaintext size from backing size: %d, %v", size, err)
	}
	h, err := ParseRegion(f.file[:HeaderRegionSize]) // no key needed
	if err != nil || h.VMID != vm.vm || h.KEKID != vm.kekID || h.ObjectID != f.hdr.ObjectID {
		t.Fatalf("header fields not readable without a key: %v", err)
	}
	// and which blocks are holes (all zero) is visible too
	from, to := span(holeBlock, len(f.file))
	if !isZero(f.file[from:to]) {
		t.Fatal("hole not visible")
	}
}

// Protected: the security-relevant policy fields (VM id, KEK id, wrapped
// DEK) are authenticated by the DEK wrap: changing any of them in the policy
// xattr makes the unwrap fail, so new files cannot be steered to another
// VM's identity or an attacker's DEK.
func TestTamperPolicy(t *testing.T) {
	vm := newTestVM(t, "tamper")
	other := newTestVM(t, "tamper-other-vm")
	for name, mod := range map[string]func(p *Policy){
		"vm_id":               func(p *Policy) { p.VMID = other.vm },
		"kek_id":              func(p *Policy) { p.KEKID = other.kekID },
		"wrapped_dek":         func(p *Policy) { p.WrappedDEK = other.wrapped },
		"wrapped_dek bitflip": func(p *Policy) { p.WrappedDEK[20] ^= 4 },
	} {
		p := vm.policy()
		mod(p)
		raw, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParsePolicy(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := UnwrapDEK(vm.kek, got.WrappedDEK, got.KEKID, got.VMID); !errors.Is(err, ErrAuth) {
			t.Errorf("policy with changed %s: unwrap %v, want ErrAuth", name, err)
		}
	}
}

// NOT protected (documented): the informational policy fields (kms,
// created, rotated) are not authenticated; changing them is not detected.
func TestNotProtectedPolicyInfoFields(t *testing.T) {
	vm := newTestVM(t, "tamper")
	p := vm.policy()
	p.KMS = "attacker.example:5696"
	raw, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePolicy(raw)
	if err != nil || got.KMS != "attacker.example:5696" {
		t.Fatalf("policy with a changed kms field: %v", err)
	}
	if _, err := UnwrapDEK(vm.kek, got.WrappedDEK, got.KEKID, got.VMID); err != nil {
		t.Fatalf("unwrap: %v; the documented gap changed, update THREAT-MODEL.md", err)
	}
}
