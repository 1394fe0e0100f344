package objcrypt

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

// TestPinnedLabels: the KDF info and wrap label are part of the on-disk
// format. Changing them changes the on-disk format: every existing object
// would become unreadable. Never edit these strings; add a new Suite.
func TestPinnedLabels(t *testing.T) {
	if ObjectKeyInfo != "cryptds v1 object" {
		t.Errorf("ObjectKeyInfo changed to %q: this breaks every existing object", ObjectKeyInfo)
	}
	if DEKWrapLabel != "cryptds v1 dek wrap" {
		t.Errorf("DEKWrapLabel changed to %q: this breaks every existing wrapped DEK", DEKWrapLabel)
	}
	if string(HeaderMagic[:]) != "CDSH" || Version1 != 1 || SuiteAES256GCM != 1 {
		t.Error("header magic, version or suite changed")
	}
	if PlainBlockSize != 4096 || NonceSize != 16 || TagSize != 16 || HeaderRegionSize != 4096 ||
		WrappedDEKSize != 60 || KeySize != 32 || ObjectIDSize != 16 || VMIDSize != 16 {
		t.Error("a format size constant changed")
	}
}

// TestPinnedObjectKeys pins HKDF-SHA256 outputs. The expected values were
// computed independently with Python's `cryptography` (HKDF, SHA256,
// salt=None, info=b"cryptds v1 object"+object_id). Changing them changes the
// on-disk format.
func TestPinnedObjectKeys(t *testing.T) {
	tests := []struct {
		dek, id []byte
		want    string
	}{
		{seq(0, 32), seq(0xa0, 16), "9de58c4a9b9a81322a3dbb13fe84b02bee165f6624f3b64a446f9cb681eaa5f7"},
		{make([]byte, 32), make([]byte, 16), "55c88d066c7e7b36ce82446743bb596e04fadf2bc0c1c392b5e9e3224f490370"},
		{bytes.Repeat([]byte{0x42}, 32), bytes.Repeat([]byte{0xff}, 16), "27275564e586c9b8e8140c0c5fedaf1679ce9486c52a8be5ad599fc1e043c4fa"},
	}
	for _, tc := range tests {
		k, err := DeriveObjectKey(tc.dek, ObjectID(tc.id))
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(k); got != tc.want {
			t.Errorf("DeriveObjectKey(%x, %x) = %s, want %s", tc.dek, tc.id, got, tc.want)
		}
	}
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := DeriveObjectKey(make([]byte, n), ObjectID{}); !errors.Is(err, ErrHeader) {
			t.Errorf("DeriveObjectKey with a %d-byte DEK: %v, want ErrHeader", n, err)
		}
	}
}

// TestPinnedWrapAndBlock pins the DEK wrap AAD, one wrapped DEK and one
// stored block against values computed independently with Python's
// `cryptography` (AESGCM accepts the 16-byte block nonce).
func TestPinnedWrapAndBlock(t *testing.T) {
	kek, dek, vm := seq(0x80, 32), seq(0, 32), VMID(seq(0x10, 16))
	const kekID = "kmip-uid-0001"
	if got := hex.EncodeToString(wrapAAD(kekID, vm)); got !=
		"637279707464732076312064656b2077726170000d6b6d69702d7569642d30303031101112131415161718191a1b1c1d1e1f" {
		t.Errorf("wrap AAD = %s", got)
	}
	w, err := WrapDEK(kek, dek, kekID, vm, bytes.NewReader(seq(0xc0, 12)))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(w); got != "c0c1c2c3c4c5c6c7c8c9cacb643d8281b8a8e5c40a263d444eac3e3f39d01852f615e44231f7b6a633ca739c8b96f896e1f48c33e3bc94bd26196041" {
		t.Errorf("wrapped DEK = %s", got)
	}
	o, err := NewObject(dek, ObjectID(seq(0xa0, 16)), bytes.NewReader(seq(0, 16)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.EncryptBlock(nil, []byte("hello, cryptds"), 5)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(s); got != "000102030405060708090a0b0c0d0e0f43912df05dfe2105c06c3abf2577ef9b5f90b4e68ba7586577f5e78bf6de" {
		t.Errorf("stored block = %s", got)
	}
}

func TestWrapUnwrap(t *testing.T) {
	v := newTestVM(t, "wrap")
	got, err := UnwrapDEK(v.kek, v.wrapped, v.kekID, v.vm)
	if err != nil || !bytes.Equal(got, v.dek) {
		t.Fatalf("UnwrapDEK = %x, %v", []byte(got), err)
	}
	if len(v.wrapped) != WrappedDEKSize {
		t.Fatalf("wrapped DEK is %d bytes", len(v.wrapped))
	}
	other := newTestVM(t, "wrap-other")
	tests := []struct {
		name    string
		kek     []byte
		wrapped []byte
		kekID   string
		vm      VMID
		want    error
	}{
		{"wrong KEK", other.kek, v.wrapped, v.kekID, v.vm, ErrAuth},
		{"wrong KEK id", v.kek, v.wrapped, v.kekID + "x", v.vm, ErrAuth},
		{"KEK id prefix", v.kek, v.wrapped, v.kekID[:len(v.kekID)-1], v.vm, ErrAuth},
		{"wrong VM id", v.kek, v.wrapped, v.kekID, other.vm, ErrAuth},
		{"another VM's wrapped DEK", v.kek, other.wrapped, v.kekID, v.vm, ErrAuth},
		{"wrapped too short", v.kek, v.wrapped[:59], v.kekID, v.vm, ErrHeader},
		{"wrapped too long", v.kek, append(bytes.Clone(v.wrapped), 0), v.kekID, v.vm, ErrHeader},
		{"KEK of 16 bytes", v.kek[:16], v.wrapped, v.kekID, v.vm, ErrHeader},
		{"no KEK", nil, v.wrapped, v.kekID, v.vm, ErrHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := UnwrapDEK(tc.kek, tc.wrapped, tc.kekID, tc.vm)
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("UnwrapDEK = %v, %v; want nil, %v", got, err, tc.want)
			}
		})
	}
	// every bit of the wrapped DEK (nonce, ciphertext, tag) is authenticated
	for i := range WrappedDEKSize * 8 {
		w := bytes.Clone(v.wrapped)
		w[i/8] ^= 1 << (i % 8)
		if _, err := UnwrapDEK(v.kek, w, v.kekID, v.vm); !errors.Is(err, ErrAuth) {
			t.Fatalf("flipping bit %d of the wrapped DEK: %v, want ErrAuth", i, err)
		}
	}
	// and every bit of the VM id
	for i := range VMIDSize * 8 {
		vm := v.vm
		vm[i/8] ^= 1 << (i % 8)
		if _, err := UnwrapDEK(v.kek, v.wrapped, v.kekID, vm); !errors.Is(err, ErrAuth) {
			t.Fatalf("flipping bit %d of the VM id: %v, want ErrAuth", i, err)
		}
	}
}

func TestWrapDEKErrors(t *testing.T) {
	v := newTestVM(t, "wrap-err")
	tests := []struct {
		name  string
		kek   []byte
		dek   []byte
		kekID string
		rnd   errReader
		useR  bool
		want  error
	}{
		{"short DEK", v.kek, v.dek[:31], v.kekID, errReader{}, false, ErrHeader},
		{"short KEK", v.kek[:31], v.dek, v.kekID, errReader{}, false, ErrHeader},
		{"empty KEK id", v.kek, v.dek, "", errReader{}, false, ErrHeader},
		{"KEK id 256 bytes", v.kek, v.dek, strings.Repeat("k", 256), errReader{}, false, ErrHeader},
		{"KEK id not UTF-8", v.kek, v.dek, "k\xff", errReader{}, false, ErrHeader},
		{"rand fails", v.kek, v.dek, v.kekID, errReader{}, true, errNoEntropy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.useR {
				_, err = WrapDEK(tc.kek, tc.dek, tc.kekID, v.vm, tc.rnd)
			} else {
				_, err = WrapDEK(tc.kek, tc.dek, tc.kekID, v.vm, nil)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("WrapDEK: %v, want %v", err, tc.want)
			}
		})
	}
	// nil rand is crypto/rand: two wraps differ, both unwrap
	a, err1 := WrapDEK(v.kek, v.dek, v.kekID, v.vm, nil)
	b, err2 := WrapDEK(v.kek, v.dek, v.kekID, v.vm, nil)
	if err1 != nil || err2 != nil || bytes.Equal(a, b) {
		t.Fatalf("WrapDEK with nil rand: %v %v, equal=%v", err1, err2, bytes.Equal(a, b))
	}
	if _, err := UnwrapDEK(v.kek, b, v.kekID, v.vm); err != nil {
		t.Fatal(err)
	}
}

func TestNewRandomValues(t *testing.T) {
	if _, err := NewDEK(errReader{}); !errors.Is(err, errNoEntropy) {
		t.Errorf("NewDEK: %v", err)
	}
	if _, err := NewObjectID(errReader{}); !errors.Is(err, errNoEntropy) {
		t.Errorf("NewObjectID: %v", err)
	}
	if _, err := NewVMID(errReader{}); !errors.Is(err, errNoEntropy) {
		t.Errorf("NewVMID: %v", err)
	}
	d1, _ := NewDEK(nil)
	d2, _ := NewDEK(nil)
	o1, _ := NewObjectID(nil)
	o2, _ := NewObjectID(nil)
	v1, _ := NewVMID(nil)
	v2, _ := NewVMID(nil)
	if len(d1) != KeySize || bytes.Equal(d1, d2) || o1 == o2 || v1 == v2 {
		t.Fatal("crypto/rand defaults produced repeated or wrong-sized values")
	}
	d1.Zero()
	if !isZero(d1) {
		t.Fatal("Key.Zero left key bytes")
	}
}

// TestKeyRedaction: a Key never prints its bytes through fmt or slog.
func TestKeyRedaction(t *testing.T) {
	k := Key(seq(0xa0, KeySize))
	leaks := []string{
		hex.EncodeToString(k), strings.ToUpper(hex.EncodeToString(k)),
		base64.StdEncoding.EncodeToString(k), string(k[:8]),
		"160", "0xa0", "[160 161", // decimal / Go-syntax byte forms
	}
	check := func(t *testing.T, what, out string) {
		t.Helper()
		for _, l := range leaks {
			if strings.Contains(out, l) {
				t.Errorf("%s leaks key material (%q) in %q", what, l, out)
			}
		}
		if !strings.Contains(out, "redacted") {
			t.Errorf("%s = %q does not say redacted", what, out)
		}
	}
	wrapper := struct{ DEK Key }{k}
	for _, verb := range []string{"%v", "%+v", "%s", "%q", "%x", "%X", "%#v", "%d", "%08x", "% x"} {
		t.Run("fmt "+verb, func(t *testing.T) {
			check(t, verb, fmt.Sprintf(verb, k))
			check(t, verb+" in struct", fmt.Sprintf(verb, wrapper))
			check(t, verb+" in slice", fmt.Sprintf(verb, []Key{k}))
			check(t, verb+" by pointer", fmt.Sprintf(verb, &k))
		})
	}
	check(t, "Sprint", fmt.Sprint(k))
	check(t, "Sprintln", fmt.Sprintln("key", k))
	check(t, "String", k.String())
	check(t, "GoString", k.GoString())
	check(t, "error wrap", fmt.Errorf("using %v: %w", k, ErrAuth).Error())
	check(t, "type and value", fmt.Sprintf("%T %v", k, k))
	j, err := json.Marshal(wrapper)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "json.Marshal in struct", string(j))
	if err := json.Unmarshal(j, &wrapper); err == nil {
		t.Error("a redacted JSON key decoded without error")
	}

	for _, h := range []struct {
		name string
		mk   func(*bytes.Buffer) slog.Handler
	}{
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
	} {
		t.Run("slog "+h.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(h.mk(&buf))
			log.Info("key", "dek", k)
			log.Info("key", slog.Any("dek", k))
			log.Info("key", slog.Group("g", "kek", k))
			log.With("dek", k).Info("with")
			log.LogAttrs(t.Context(), slog.LevelInfo, "attrs", slog.Any("dek", k))
			log.Info("struct", "entry", wrapper) // JSON handler marshals the struct
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				check(t, "slog "+h.name, line)
			}
		})
	}
}
