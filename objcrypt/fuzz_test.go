package objcrypt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Fuzz targets. Their seed corpus lives in testdata/fuzz/<Name>/: seed-*
// files are written by `go test ./objcrypt -run TestFuzzSeedCorpus -update`;
// found-* files are coverage-expanding inputs a fuzzing run found (copied
// from $(go env GOCACHE)/fuzz/github.com/cryptds/cryptds/objcrypt/<Name>/)
// and are kept, so every `go test` replays them.
// TestFuzzSeedCorpus fails if any target's seed directory is empty.
// Run a target: go test ./objcrypt -run '^$' -fuzz '^FuzzParseHeader$' -fuzztime 60s -parallel 1

// padRegion turns b into a candidate header region: zero padded to
// HeaderRegionSize, or cut to it.
func padRegion(b []byte) []byte {
	r := make([]byte, HeaderRegionSize)
	copy(r, b)
	return r
}

func isFormatErr(err error) bool { return errors.Is(err, ErrHeader) || errors.Is(err, ErrVersion) }

// FuzzParseHeader: the header parsers never panic, fail only with ErrHeader
// or ErrVersion, and anything that parses re-marshals to the identical bytes
// (no two encodings of one header: the format is not malleable).
func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHeader(data)
		if err != nil {
			if h != nil || !isFormatErr(err) {
				t.Fatalf("ParseHeader = %v, %v", h, err)
			}
		} else {
			m, err := h.MarshalBinary()
			if err != nil || !bytes.Equal(m, data) {
				t.Fatalf("re-marshal differs: %v\n in %x\nout %x", err, data, m)
			}
		}
		for _, r := range [][]byte{data, padRegion(data)} {
			hr, rerr := ParseRegion(r)
			if rerr != nil {
				if hr != nil || !isFormatErr(rerr) {
					t.Fatalf("ParseRegion = %v, %v", hr, rerr)
				}
				continue
			}
			m, err := hr.MarshalRegion()
			if err != nil || !bytes.Equal(m, r) {
				t.Fatalf("region re-marshal differs: %v", err)
			}
		}
		// a header that parses is a region once padded, with the same fields
		if err == nil && len(data) <= HeaderRegionSize {
			hr, err := ParseRegion(padRegion(data))
			if err != nil || !hr.Equal(h) {
				t.Fatalf("padded header is not a valid region: %v", err)
			}
		}
	})
}

// FuzzParsePolicy: the policy parser never panics, fails only with ErrHeader
// or ErrVersion, and what parses re-encodes to a canonical form that is a
// fixed point (JSON has many spellings of one object; the xattr written by
// cryptds is always the canonical one).
func FuzzParsePolicy(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			if p != nil || !isFormatErr(err) {
				t.Fatalf("ParsePolicy = %v, %v", p, err)
			}
			return
		}
		m, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("a parsed policy does not marshal: %v", err)
		}
		p2, err := ParsePolicy(m)
		if err != nil {
			t.Fatalf("canonical form does not parse: %v\n%s", err, m)
		}
		m2, err := p2.MarshalBinary()
		if err != nil || !bytes.Equal(m, m2) {
			t.Fatalf("canonical form is not a fixed point: %v\n%s\n%s", err, m, m2)
		}
		if p2.VMID != p.VMID || p2.KEKID != p.KEKID || !bytes.Equal(p2.WrappedDEK, p.WrappedDEK) ||
			!p2.Created.Equal(p.Created) || !p2.Rotated.Equal(p.Rotated) || p2.KMS != p.KMS {
			t.Fatal("re-encoding changed a field")
		}
		if bytes.Equal(m, data) {
			return
		}
		// a non-canonical input is still the same policy
		h := p.NewHeader(ObjectID{})
		if _, err := h.MarshalBinary(); err != nil {
			t.Fatalf("a valid policy gives an invalid header: %v", err)
		}
	})
}

// fuzzObject is the fixed object FuzzDecryptBlock decrypts with: the DEK
// and object id of TestPinnedObjectKeys.
func fuzzObject(t testing.TB, nonces []byte) *Object {
	var r *bytes.Reader
	if nonces != nil {
		r = bytes.NewReader(nonces)
	}
	var o *Object
	var err error
	if r == nil {
		o, err = NewObject(seq(0, 32), ObjectID(seq(0xa0, 16)), nil)
	} else {
		o, err = NewObject(seq(0, 32), ObjectID(seq(0xa0, 16)), r)
	}
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// FuzzDecryptBlock: decrypting arbitrary stored bytes never panics; it
// fails with a *BlockError naming the block (ErrHeader exactly when the
// length is impossible, else ErrAuth) and leaves dst alone, or it succeeds
// on a hole (zeros) or on a genuine block, which then re-encrypts with the
// same nonce to the identical bytes. Inline and pooled bulk decryption agree.
func FuzzDecryptBlock(f *testing.F) {
	o := fuzzObject(f, nil)
	pool := NewPool(2, 1)
	f.Cleanup(pool.Close)
	f.Fuzz(func(t *testing.T, stored []byte, block uint64) {
		prefix := []byte("dst")
		out, err := o.DecryptBlock(bytes.Clone(prefix), stored, block)
		if err != nil {
			var be *BlockError
			if !errors.As(err, &be) || be.Block != block {
				t.Fatalf("error %v is not a *BlockError for block %d", err, block)
			}
			badLen := len(stored) <= BlockOverhead || len(stored) > CipherBlockSize
			if badLen != errors.Is(err, ErrHeader) || badLen == errors.Is(err, ErrAuth) {
				t.Fatalf("%d-byte block: %v", len(stored), err)
			}
			if !bytes.Equal(out, prefix) {
				t.Fatal("a failed decrypt changed dst")
			}
		} else {
			plain := out[len(prefix):]
			if !bytes.Equal(out[:len(prefix)], prefix) || len(plain) != len(stored)-BlockOverhead {
				t.Fatalf("%d stored bytes gave %d plaintext bytes", len(stored), len(plain))
			}
			if isZero(stored) {
				if !isZero(plain) {
					t.Fatal("a hole did not read as zeros")
				}
			} else {
				again, err := fuzzObject(t, stored[:NonceSize]).EncryptBlock(nil, plain, block)
				if err != nil || !bytes.Equal(again, stored) {
					t.Fatalf("an accepted block does not re-encrypt to itself: %v", err)
				}
			}
		}
		// bulk: inline and pooled agree, block for block
		a, errA := o.DecryptBlocks(nil, stored, block, nil)
		b, errB := o.DecryptBlocks(nil, stored, block, pool)
		if !bytes.Equal(a, b) || (errA == nil) != (errB == nil) {
			t.Fatalf("inline and pooled DecryptBlocks differ: %v / %v", errA, errB)
		}
		if errA != nil {
			var ea, eb *BlockError
			if !errors.As(errA, &ea) || !errors.As(errB, &eb) || ea.Block != eb.Block ||
				errors.Is(errA, ErrAuth) != errors.Is(errB, ErrAuth) {
				t.Fatalf("inline and pooled errors differ: %v / %v", errA, errB)
			}
		}
		if len(stored) > 0 && len(stored) <= CipherBlockSize && (err == nil) != (errA == nil) {
			t.Fatalf("DecryptBlock and DecryptBlocks disagree on one block: %v / %v", err, errA)
		}
	})
}

// FuzzOffsets: the size and offset arithmetic is exact, invertible and
// overflow-free over the whole uint64 range.
func FuzzOffsets(f *testing.F) {
	f.Fuzz(func(t *testing.T, plainSize, cipherSize, off, length uint64) {
		// plain -> cipher -> plain
		c := CipherSizeFromPlain(plainSize)
		if plainSize > MaxPlainSize {
			if c != math.MaxUint64 {
				t.Fatalf("CipherSizeFromPlain(%d) = %d, want saturation", plainSize, c)
			}
		} else {
			if c > math.MaxInt64 || c != HeaderRegionSize+plainSize+PlainBlocks(plainSize)*BlockOverhead {
				t.Fatalf("CipherSizeFromPlain(%d) = %d", plainSize, c)
			}
			if p, err := PlainSizeFromCipher(c); err != nil || p != plainSize {
				t.Fatalf("PlainSizeFromCipher(CipherSizeFromPlain(%d)) = %d, %v", plainSize, p, err)
			}
			if plainSize < MaxPlainSize && CipherSizeFromPlain(plainSize+1) <= c {
				t.Fatalf("CipherSizeFromPlain not increasing at %d", plainSize)
			}
			// every block of the object lies inside the backing file
			if plainSize > 0 {
				last := PlainBlocks(plainSize) - 1
				if CipherOffsetOfBlock(last) >= c || c-CipherOffsetOfBlock(last) > CipherBlockSize ||
					c-CipherOffsetOfBlock(last) <= BlockOverhead {
					t.Fatalf("last block %d of %d bytes at %d, backing %d", last, plainSize, CipherOffsetOfBlock(last), c)
				}
			}
		}
		// cipher -> plain -> cipher
		p, err := PlainSizeFromCipher(cipherSize)
		body := cipherSize - HeaderRegionSize
		frag := body % CipherBlockSize
		malformed := cipherSize < HeaderRegionSize || (frag > 0 && frag <= BlockOverhead)
		if malformed != (err != nil) || (err != nil && !errors.Is(err, ErrHeader)) {
			t.Fatalf("PlainSizeFromCipher(%d) = %d, %v", cipherSize, p, err)
		}
		if err == nil && p <= MaxPlainSize && CipherSizeFromPlain(p) != cipherSize {
			t.Fatalf("CipherSizeFromPlain(PlainSizeFromCipher(%d)) = %d", cipherSize, CipherSizeFromPlain(p))
		}
		// block range
		first, count := BlockRange(off, length)
		if first != BlockOfPlainOffset(off) || PlainOffsetOfBlock(first) > off || off-PlainOffsetOfBlock(first) >= PlainBlockSize {
			t.Fatalf("BlockRange(%d, %d) first = %d", off, length, first)
		}
		if length == 0 {
			if count != 0 {
				t.Fatalf("BlockRange(%d, 0) count = %d", off, count)
			}
			return
		}
		end := off + length - 1
		if end < off {
			end = math.MaxUint64
		}
		last := first + count - 1
		if count == 0 || last < first || PlainOffsetOfBlock(last) > end || end-PlainOffsetOfBlock(last) >= PlainBlockSize {
			t.Fatalf("BlockRange(%d, %d) = %d, %d: last block %d does not hold byte %d", off, length, first, count, last, end)
		}
	})
}

// fuzzTargets lists the Fuzz functions declared in this package's tests,
// so a new target without seeds fails TestFuzzSeedCorpus.
func fuzzTargets(t *testing.T) []string {
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && strings.HasPrefix(fd.Name.Name, "Fuzz") {
				names = append(names, fd.Name.Name)
			}
		}
	}
	slices.Sort(names)
	return names
}

// corpusEntry encodes fuzz arguments in the `go test fuzz v1` file format.
func corpusEntry(args ...any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case uint64:
			fmt.Fprintf(&b, "uint64(%d)\n", v)
		default:
			panic(fmt.Sprintf("objcrypt: internal error: corpus type %T", a))
		}
	}
	return b.Bytes()
}

// seedCorpus returns the named seeds of every fuzz target.
func seedCorpus(t *testing.T) map[string]map[string][]byte {
	seeds := map[string]map[string][]byte{
		"FuzzParseHeader": {}, "FuzzParsePolicy": {}, "FuzzDecryptBlock": {}, "FuzzOffsets": {},
		"FuzzParseDatastoreID": {},
	}
	sid := seeds["FuzzParseDatastoreID"]
	sid["valid"] = corpusEntry([]byte("ds-0123456789abcdef"))
	sid["traversal"] = corpusEntry([]byte("../../../../etc/NAME"))
	sid["upper-hex"] = corpusEntry([]byte("ds-0123456789ABCDEF"))
	sid["slash"] = corpusEntry([]byte("ds-0123456789abcde/"))
	sid["nul"] = corpusEntry([]byte("ds-0123456789abcde\x00"))
	sid["long"] = corpusEntry([]byte("ds-0123456789abcdef0"))
	for _, v := range loadVectors(t) {
		seeds["FuzzParseHeader"]["vector-"+v.Name] = corpusEntry([]byte(v.HeaderXattr))
		seeds["FuzzParsePolicy"]["vector-"+v.Name] = corpusEntry([]byte(v.PolicyXattr))
	}
	h := testHeader(t)
	good, _ := h.MarshalBinary()
	region, _ := h.MarshalRegion()
	sh := seeds["FuzzParseHeader"]
	sh["empty"] = corpusEntry([]byte{})
	sh["magic-only"] = corpusEntry([]byte("CDSH"))
	sh["fixed-part"] = corpusEntry(good[:headerFixedLen])
	sh["truncated"] = corpusEntry(good[:len(good)-1])
	sh["trailing"] = corpusEntry(append(bytes.Clone(good), 0))
	sh["version-2"] = corpusEntry(append(append([]byte("CDSH"), 0, 2), good[6:]...))
	sh["region"] = corpusEntry(region)
	sh["region-dirty-padding"] = corpusEntry(append(bytes.Clone(region[:HeaderRegionSize-1]), 1))

	p := testPolicy(t)
	p.Rotated = p.Created.Add(time.Minute)
	pj, _ := p.MarshalBinary()
	var m map[string]any
	_ = json.Unmarshal(pj, &m)
	pretty, _ := json.MarshalIndent(m, "", " ")
	sp := seeds["FuzzParsePolicy"]
	sp["rotated"] = corpusEntry(pj)
	sp["indented"] = corpusEntry(pretty)
	sp["trailing-brace"] = corpusEntry(append(bytes.Clone(pj), '}'))
	sp["unknown-field"] = corpusEntry([]byte(`{"v":1,"x":2}`))
	sp["null"] = corpusEntry([]byte("null"))

	o := fuzzObject(t, detBytes("fuzz-nonces", 10*NonceSize))
	blk := func(n int, b uint64) []byte {
		s, err := o.EncryptBlock(nil, randPlain(fmt.Sprint("fuzz", n), n), b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	full0, one5 := blk(PlainBlockSize, 0), blk(1, 5)
	sd := seeds["FuzzDecryptBlock"]
	sd["full-block-0"] = corpusEntry(full0, uint64(0))
	sd["full-block-wrong-number"] = corpusEntry(full0, uint64(1))
	sd["one-byte-block-5"] = corpusEntry(one5, uint64(5))
	sd["partial-block-max"] = corpusEntry(blk(1000, math.MaxUint64), uint64(math.MaxUint64))
	sd["two-blocks"] = corpusEntry(slices.Concat(full0, blk(100, 1)), uint64(0))
	sd["hole-full"] = corpusEntry(make([]byte, CipherBlockSize), uint64(3))
	sd["hole-min"] = corpusEntry(make([]byte, BlockOverhead+1), uint64(3))
	sd["too-short"] = corpusEntry(make([]byte, BlockOverhead), uint64(0))
	sd["too-long"] = corpusEntry(make([]byte, CipherBlockSize+1), uint64(0))
	sd["empty"] = corpusEntry([]byte{}, uint64(0))

	so := seeds["FuzzOffsets"]
	so["zero"] = corpusEntry(uint64(0), uint64(0), uint64(0), uint64(0))
	so["one-block"] = corpusEntry(uint64(4096), uint64(8224), uint64(4095), uint64(2))
	so["fragment"] = corpusEntry(uint64(4097), uint64(4096+4128+32), uint64(4096), uint64(4096))
	so["max"] = corpusEntry(uint64(MaxPlainSize), uint64(math.MaxInt64), uint64(math.MaxUint64), uint64(2))
	so["max-plus-one"] = corpusEntry(uint64(MaxPlainSize+1), uint64(math.MaxUint64), uint64(math.MaxUint64-4096), uint64(math.MaxUint64))
	return seeds
}

// TestFuzzSeedCorpus fails if a fuzz target has no committed seeds, or a
// seed file is not in the `go test fuzz v1` format. With -update it rewrites
// the seed-* files (fuzzer-found entries are left alone).
func TestFuzzSeedCorpus(t *testing.T) {
	targets := fuzzTargets(t)
	if len(targets) < 4 {
		t.Fatalf("found fuzz targets %v, want at least 4", targets)
	}
	if *update {
		for name, entries := range seedCorpus(t) {
			dir := filepath.Join("testdata", "fuzz", name)
			old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
			for _, f := range old {
				_ = os.Remove(f)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for k, b := range entries {
				if err := os.WriteFile(filepath.Join(dir, "seed-"+k), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, name := range targets {
		dir := filepath.Join("testdata", "fuzz", name)
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) == 0 {
			t.Errorf("fuzz target %s has no seed corpus in %s (%v): run with -update", name, dir, err)
			continue
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
				t.Errorf("%s/%s is not a fuzz corpus file (%v)", dir, e.Name(), err)
			}
		}
	}
}
