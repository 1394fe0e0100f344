package objcrypt

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"testing"
)

// update regenerates the committed test vectors and fuzz seed corpus:
//
//	go test ./objcrypt -run 'TestVectors|TestFuzzSeedCorpus' -update
//
// Review the diff: a changed vector means a changed on-disk format.
var update = flag.Bool("update", false, "rewrite testdata/vectors and testdata/fuzz seeds")

// detReader is a deterministic byte stream: SHA-256(seed ‖ u64 counter)
// blocks. It stands in for crypto/rand where a test needs reproducible keys,
// ids or nonces. Not safe for concurrent use.
type detReader struct {
	seed string
	ctr  uint64
	buf  []byte
}

func newDetReader(seed string) *detReader { return &detReader{seed: seed} }

func (r *detReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(r.buf) == 0 {
			h := sha256.New()
			h.Write([]byte(r.seed))
			var c [8]byte
			binary.BigEndian.PutUint64(c[:], r.ctr)
			h.Write(c[:])
			r.ctr++
			r.buf = h.Sum(nil)
		}
		k := copy(p[n:], r.buf)
		r.buf = r.buf[k:]
		n += k
	}
	return n, nil
}

// detBytes returns n deterministic bytes for seed.
func detBytes(seed string, n int) []byte {
	b := make([]byte, n)
	_, _ = newDetReader(seed).Read(b)
	return b
}

// errReader fails every read, to exercise the random source error paths.
type errReader struct{}

var errNoEntropy = errors.New("test: no entropy")

func (errReader) Read([]byte) (int, error) { return 0, errNoEntropy }

// testVM is a VM with its keys and one policy, built deterministically.
type testVM struct {
	kek, dek Key
	kekID    string
	vm       VMID
	wrapped  []byte
}

func newTestVM(t testing.TB, seed string) *testVM {
	t.Helper()
	r := newDetReader(seed)
	v := &testVM{kekID: "kek-" + seed}
	var err error
	if v.kek, err = NewDEK(r); err != nil { // any 32 random bytes make a KEK
		t.Fatal(err)
	}
	if v.dek, err = NewDEK(r); err != nil {
		t.Fatal(err)
	}
	if v.vm, err = NewVMID(r); err != nil {
		t.Fatal(err)
	}
	if v.wrapped, err = WrapDEK(v.kek, v.dek, v.kekID, v.vm, r); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *testVM) policy() *Policy {
	return &Policy{Version: PolicyVersion1, VMID: v.vm, KEKID: v.kekID, WrappedDEK: bytes.Clone(v.wrapped)}
}

// newObject returns an object of the VM with a deterministic id and
// crypto/rand nonces (so it may be used from the pool).
func (v *testVM) newObject(t testing.TB, seed string) (*Object, *Header) {
	t.Helper()
	id, err := NewObjectID(newDetReader(seed))
	if err != nil {
		t.Fatal(err)
	}
	o, err := NewObject(v.dek, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o, v.policy().NewHeader(id)
}

// randPlain returns n pseudo-random plaintext bytes (never all-zero blocks).
func randPlain(seed string, n int) []byte { return detBytes("plain:"+seed, n) }

// mustBlockErr asserts err is a *BlockError for block wantBlock wrapping
// sentinel.
func mustBlockErr(t testing.TB, err error, wantBlock uint64, sentinel error) {
	t.Helper()
	var be *BlockError
	if !errors.As(err, &be) {
		t.Fatalf("error %v (%T) is not a *BlockError", err, err)
	}
	if be.Block != wantBlock {
		t.Fatalf("BlockError.Block = %d, want %d (%v)", be.Block, wantBlock, err)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v does not wrap %v", err, sentinel)
	}
}
