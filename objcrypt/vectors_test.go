package objcrypt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Known-answer vectors in testdata/vectors/*.json pin the whole v1 format
// byte for byte: header xattr, header region, DEK wrap, object key, blocks
// (with a hole) and the policy xattr. Every "random" value is listed in the
// file and fed to the code through an injected io.Reader, in this order:
//
//	dek(32) ‖ vm_id(16) ‖ object_id(16) ‖ wrap_nonce(12) ‖ block_nonces(16 each, data blocks in order)
//
// Regenerate only for a new vector: go test ./objcrypt -run TestVectors -update
// A diff in an existing vector is a format change.

const vectorDir = "testdata/vectors"

// hexBytes is []byte as a hex string in JSON, readable and diffable.
type hexBytes []byte

func (h hexBytes) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }

func (h *hexBytes) UnmarshalText(b []byte) error {
	d, err := hex.DecodeString(string(b))
	*h = d
	return err
}

type vector struct {
	Name    string `json:"name"`
	Comment string `json:"comment"`

	// inputs
	KEK         hexBytes   `json:"kek"`
	KEKID       string     `json:"kek_id"`
	DEK         hexBytes   `json:"dek"`
	VMID        hexBytes   `json:"vm_id"`
	ObjectID    hexBytes   `json:"object_id"`
	WrapNonce   hexBytes   `json:"wrap_nonce"`
	BlockNonces []hexBytes `json:"block_nonces"`
	Holes       []uint64   `json:"holes"` // blocks stored as all-zero bytes (sparse)
	Plaintext   hexBytes   `json:"plaintext"`
	KMS         string     `json:"policy_kms"`
	Created     time.Time  `json:"policy_created"`

	// expected outputs
	ObjectKey    hexBytes `json:"object_key"`
	WrapAAD      hexBytes `json:"wrap_aad"`
	WrappedDEK   hexBytes `json:"wrapped_dek"`
	HeaderXattr  hexBytes `json:"header_xattr"`
	HeaderRegion hexBytes `json:"header_region"`
	Blocks       hexBytes `json:"blocks"` // backing file = header_region ‖ blocks
	BackingSize  uint64   `json:"backing_size"`
	PolicyXattr  string   `json:"policy_xattr"`
}

// vectorSpecs are the inputs of the committed vectors.
var vectorSpecs = []struct {
	name, comment, kekID string
	plain                func() []byte
	holes                []uint64
}{
	{"empty", "an empty file: header region only, no blocks", "kmip-uid-0001",
		func() []byte { return nil }, nil},
	{"short", "one partial block of 15 bytes", "kmip-uid-0001",
		func() []byte { return []byte("hello, cryptds\n") }, nil},
	{"one-block-plus-one", "4097 bytes: a full block and a 1-byte block", "6b1c4bd3-5e2f-4a59-9c1e-0d3f6a7b8c9d",
		func() []byte { return detBytes("vector:one-block-plus-one", 4097) }, nil},
	{"sparse", "3 full blocks and 17 bytes, block 1 a hole (stored as 4128 zero bytes)", "kmip-uid-0002",
		func() []byte {
			p := detBytes("vector:sparse", 3*PlainBlockSize+17)
			clear(p[PlainBlockSize : 2*PlainBlockSize])
			return p
		}, []uint64{1}},
	{"long-kek-id", "the longest KEK id, 255 bytes of UTF-8 (127 two-byte letters and an x)", strings.Repeat("é", 127) + "x",
		func() []byte { return bytes.Repeat([]byte{0}, 32) }, nil},
}

// randStream is the order in which the code consumes random bytes.
func (v *vector) randStream() []byte {
	s := slices.Concat([]byte(v.DEK), v.VMID, v.ObjectID, v.WrapNonce)
	for _, n := range v.BlockNonces {
		s = append(s, n...)
	}
	return s
}

// build runs the format code on the vector's inputs and fills in the
// expected outputs.
func (v *vector) build(t *testing.T) {
	t.Helper()
	r := bytes.NewReader(v.randStream())
	dek, err := NewDEK(r)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := NewVMID(r)
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewObjectID(r)
	if err != nil {
		t.Fatal(err)
	}
	if v.WrappedDEK, err = WrapDEK(v.KEK, dek, v.KEKID, vm, r); err != nil {
		t.Fatal(err)
	}
	v.WrapAAD = wrapAAD(v.KEKID, vm)
	okey, err := DeriveObjectKey(dek, id)
	if err != nil {
		t.Fatal(err)
	}
	v.ObjectKey = hexBytes(okey) // a Key would redact itself in JSON
	pol := &Policy{Version: PolicyVersion1, VMID: vm, KEKID: v.KEKID, KMS: v.KMS, WrappedDEK: v.WrappedDEK, Created: v.Created}
	pj, err := pol.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	v.PolicyXattr = string(pj)
	h := pol.NewHeader(id)
	if v.HeaderXattr, err = h.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	if v.HeaderRegion, err = h.MarshalRegion(); err != nil {
		t.Fatal(err)
	}
	o, err := NewObject(dek, id, r)
	if err != nil {
		t.Fatal(err)
	}
	// runs of data blocks go through EncryptBlocks, holes are zero bytes
	v.Blocks = hexBytes{}
	n := PlainBlocks(uint64(len(v.Plaintext)))
	for b := uint64(0); b < n; {
		end := b
		for end < n && !slices.Contains(v.Holes, end) {
			end++
		}
		if end > b {
			from, to := PlainOffsetOfBlock(b), min(PlainOffsetOfBlock(end), uint64(len(v.Plaintext)))
			if v.Blocks, err = o.EncryptBlocks(v.Blocks, v.Plaintext[from:to], b, nil); err != nil {
				t.Fatal(err)
			}
			b = end
			continue
		}
		plainLen := min(PlainOffsetOfBlock(b+1), uint64(len(v.Plaintext))) - PlainOffsetOfBlock(b)
		v.Blocks = append(v.Blocks, make([]byte, plainLen+BlockOverhead)...)
		b++
	}
	v.BackingSize = uint64(len(v.HeaderRegion) + len(v.Blocks))
	if r.Len() != 0 {
		t.Fatalf("%d random bytes left over: the consumption order changed", r.Len())
	}
}

func generateVectors(t *testing.T) {
	if err := os.MkdirAll(vectorDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range vectorSpecs {
		seed := "vector:" + s.name + ":"
		v := &vector{
			Name: s.name, Comment: s.comment, KEKID: s.kekID, Plaintext: s.plain(), Holes: s.holes,
			KEK:       detBytes(seed+"kek", KeySize),
			DEK:       detBytes(seed+"dek", KeySize),
			VMID:      detBytes(seed+"vm", VMIDSize),
			ObjectID:  detBytes(seed+"object", ObjectIDSize),
			WrapNonce: detBytes(seed+"wrap-nonce", wrapNonceSize),
			KMS:       "kms.example:5696",
			Created:   time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		}
		if v.Holes == nil {
			v.Holes = []uint64{}
		}
		v.BlockNonces = []hexBytes{}
		for b := range PlainBlocks(uint64(len(v.Plaintext))) {
			if !slices.Contains(v.Holes, b) {
				v.BlockNonces = append(v.BlockNonces, detBytes(fmt.Sprintf("%snonce-%d", seed, b), NonceSize))
			}
		}
		v.build(t)
		out, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vectorDir, s.name+".json"), append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func loadVectors(t *testing.T) []*vector {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(vectorDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []*vector
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v vector
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		vs = append(vs, &v)
	}
	if len(vs) < len(vectorSpecs) {
		t.Fatalf("%d vectors in %s, want at least %d (run with -update once)", len(vs), vectorDir, len(vectorSpecs))
	}
	return vs
}

// TestVectors checks every committed vector byte for byte, in both
// directions: encrypting its inputs reproduces its outputs, and decrypting
// its backing file with only the KEK recovers the plaintext.
func TestVectors(t *testing.T) {
	if *update {
		generateVectors(t)
	}
	pool := NewPool(2, 1)
	defer pool.Close()
	for _, want := range loadVectors(t) {
		t.Run(want.Name, func(t *testing.T) {
			// encrypt: the inputs reproduce every output byte
			got := *want
			got.build(t)
			for _, f := range []struct {
				name      string
				got, want []byte
			}{
				{"object_key", got.ObjectKey, want.ObjectKey},
				{"wrap_aad", got.WrapAAD, want.WrapAAD},
				{"wrapped_dek", got.WrappedDEK, want.WrappedDEK},
				{"header_xattr", got.HeaderXattr, want.HeaderXattr},
				{"header_region", got.HeaderRegion, want.HeaderRegion},
				{"blocks", got.Blocks, want.Blocks},
				{"policy_xattr", []byte(got.PolicyXattr), []byte(want.PolicyXattr)},
			} {
				if !bytes.Equal(f.got, f.want) {
					t.Errorf("%s differs: the on-disk format changed\n got %x\nwant %x", f.name, f.got, f.want)
				}
			}
			if got.BackingSize != want.BackingSize || CipherSizeFromPlain(uint64(len(want.Plaintext))) != want.BackingSize {
				t.Errorf("backing size %d, CipherSizeFromPlain %d, vector %d",
					got.BackingSize, CipherSizeFromPlain(uint64(len(want.Plaintext))), want.BackingSize)
			}

			// decrypt: only the KEK and the stored bytes are needed
			backing := slices.Concat([]byte(want.HeaderRegion), want.Blocks)
			hx, err := ParseHeader(want.HeaderXattr)
			if err != nil {
				t.Fatal(err)
			}
			hr, err := ParseRegion(backing[:HeaderRegionSize])
			if err != nil || !hx.Equal(hr) {
				t.Fatalf("region: %v", err)
			}
			if hx.KEKID != want.KEKID || !bytes.Equal(hx.VMID[:], want.VMID) || !bytes.Equal(hx.ObjectID[:], want.ObjectID) {
				t.Fatal("header fields differ from the vector")
			}
			dek, err := UnwrapDEK(want.KEK, hx.WrappedDEK, hx.KEKID, hx.VMID)
			if err != nil || !bytes.Equal(dek, want.DEK) {
				t.Fatalf("UnwrapDEK: %v", err)
			}
			pol, err := ParsePolicy([]byte(want.PolicyXattr))
			if err != nil || pol.VMID != hx.VMID || pol.KEKID != hx.KEKID || !bytes.Equal(pol.WrappedDEK, hx.WrappedDEK) {
				t.Fatalf("policy xattr: %v", err)
			}
			size, err := PlainSizeFromCipher(uint64(len(backing)))
			if err != nil || size != uint64(len(want.Plaintext)) {
				t.Fatalf("PlainSizeFromCipher = %d, %v", size, err)
			}
			o, err := NewObject(dek, hx.ObjectID, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []*Pool{nil, pool} {
				plain, err := o.DecryptBlocks(nil, backing[HeaderRegionSize:], 0, p)
				if err != nil || !bytes.Equal(plain, want.Plaintext) {
					t.Fatalf("DecryptBlocks (pool %v): %v", p != nil, err)
				}
			}
			for _, hole := range want.Holes {
				from, to := span(hole, len(backing))
				if !isZero(backing[from:to]) {
					t.Fatalf("hole block %d is not stored as zeros", hole)
				}
			}
		})
	}
}
