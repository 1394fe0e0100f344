package objcrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"unicode"
	"unicode/utf8"
)

const (
	// KeySize is the size of every key in the hierarchy (KEK, DEK, object key).
	KeySize = 32
	// wrapNonceSize is the standard GCM nonce used for the DEK wrap.
	wrapNonceSize = 12
	// WrappedDEKSize is nonce(12) ‖ encrypted DEK(32) ‖ tag(16).
	WrappedDEKSize = wrapNonceSize + KeySize + TagSize
)

// KDF and wrap labels. They are part of the on-disk format: changing one
// makes every existing object unreadable. Tests pin them and their outputs
// (TestPinnedLabels, TestPinnedObjectKeys).
const (
	// ObjectKeyInfo is the HKDF-SHA256 info prefix of an object key; the
	// 16 raw object id bytes follow it.
	ObjectKeyInfo = "cryptds v1 object"
	// DEKWrapLabel starts the associated data of the DEK wrap, so a wrapped
	// DEK can never be confused with any other AES-GCM message under the KEK.
	DEKWrapLabel = "cryptds v1 dek wrap"
)

// Key is secret key material. It redacts itself in fmt, slog and JSON output
// so a stray log line cannot leak it; Zero wipes it when the owner is done.
// To store a key on purpose, convert it: []byte(k).
//
// One gap is fmt's, not Key's: fmt does not call methods on unexported
// struct fields, so printing a struct that holds a Key in an unexported
// field with %v shows the bytes. Such structs need their own String or
// LogValue.
type Key []byte

// String redacts the key.
func (Key) String() string { return "[redacted key]" }

// GoString redacts the key for %#v.
func (Key) GoString() string { return "objcrypt.Key{redacted}" }

// Format redacts the key for every verb, including %x and %v.
func (Key) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted key]") }

// LogValue redacts the key in slog output.
func (Key) LogValue() slog.Value { return slog.StringValue("[redacted key]") }

// MarshalJSON redacts the key, so a struct holding one cannot leak it through
// encoding/json (slog's JSON handler marshals struct values this way).
// Decoding the result into a Key fails, so nothing silently stores the
// placeholder in place of a key.
func (Key) MarshalJSON() ([]byte, error) { return []byte(`"[redacted key]"`), nil }

// Zero overwrites the key bytes.
func (k Key) Zero() { clear(k) }

// NewDEK returns KeySize random bytes from rnd (nil: crypto/rand; tests
// inject a deterministic reader to produce byte-exact vectors).
func NewDEK(rnd io.Reader) (Key, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	k := make(Key, KeySize)
	if _, err := io.ReadFull(rnd, k); err != nil {
		return nil, fmt.Errorf("generate DEK: %w", err)
	}
	return k, nil
}

// wrapAAD binds a wrapped DEK to the KEK id and VM id, so a wrapped DEK
// cannot be presented as belonging to another VM or another KEK id.
func wrapAAD(kekID string, vm VMID) []byte {
	b := make([]byte, 0, len(DEKWrapLabel)+2+len(kekID)+VMIDSize)
	b = append(b, DEKWrapLabel...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(kekID)))
	b = append(b, kekID...)
	return append(b, vm[:]...)
}

func newGCM(key []byte, nonceSize int) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("key is %d bytes, want %d: %w", len(key), KeySize, ErrHeader)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	if nonceSize == 12 {
		return cipher.NewGCM(blk)
	}
	return cipher.NewGCMWithNonceSize(blk, nonceSize)
}

// checkKEKID enforces what a header and a policy can store: 1..MaxKEKIDLen
// bytes of UTF-8 (a KMIP Unique Identifier is a text string, and the JSON
// policy could not carry other bytes unchanged) without control or format
// characters. The id comes from the backing store, so it is hostile: it
// reaches KMS requests, log lines and terminals, where a newline, an escape
// sequence or a bidi override could forge output.
func checkKEKID(kekID string) error {
	if len(kekID) == 0 || len(kekID) > MaxKEKIDLen {
		return fmt.Errorf("KEK id length %d not in 1..%d: %w", len(kekID), MaxKEKIDLen, ErrHeader)
	}
	if err := CheckPrintable(kekID); err != nil {
		return fmt.Errorf("KEK id: %w", err)
	}
	return nil
}

// CheckPrintable accepts valid UTF-8 without control characters (C0, DEL,
// C1) and without Unicode format characters (bidi overrides, zero-width
// joiners): text read from the backing store that may be printed. The
// error wraps ErrHeader and quotes the value.
func CheckPrintable(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not UTF-8: %w", s, ErrHeader)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%q holds the control or format character %U: %w", s, r, ErrHeader)
		}
	}
	return nil
}

// WrapDEK encrypts dek under kek with AES-256-GCM, binding kekID and vm.
// The result is nonce ‖ ciphertext ‖ tag (WrappedDEKSize bytes). rnd supplies
// the 12-byte nonce (nil: crypto/rand). kekID must be storable in a header
// (1..MaxKEKIDLen bytes of UTF-8), else ErrHeader.
func WrapDEK(kek, dek []byte, kekID string, vm VMID, rnd io.Reader) ([]byte, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("DEK is %d bytes, want %d: %w", len(dek), KeySize, ErrHeader)
	}
	if err := checkKEKID(kekID); err != nil {
		return nil, fmt.Errorf("wrap DEK: %w", err)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	aead, err := newGCM(kek, wrapNonceSize)
	if err != nil {
		return nil, fmt.Errorf("wrap DEK: %w", err)
	}
	out := make([]byte, wrapNonceSize, WrappedDEKSize)
	if _, err := io.ReadFull(rnd, out); err != nil {
		return nil, fmt.Errorf("wrap DEK nonce: %w", err)
	}
	return aead.Seal(out, out[:wrapNonceSize], dek, wrapAAD(kekID, vm)), nil
}

// UnwrapDEK reverses WrapDEK. A wrong KEK, KEK id, VM id or any changed byte
// gives ErrAuth.
func UnwrapDEK(kek, wrapped []byte, kekID string, vm VMID) (Key, error) {
	if len(wrapped) != WrappedDEKSize {
		return nil, fmt.Errorf("wrapped DEK is %d bytes, want %d: %w", len(wrapped), WrappedDEKSize, ErrHeader)
	}
	aead, err := newGCM(kek, wrapNonceSize)
	if err != nil {
		return nil, fmt.Errorf("unwrap DEK: %w", err)
	}
	dek, err := aead.Open(make(Key, 0, KeySize), wrapped[:wrapNonceSize], wrapped[wrapNonceSize:], wrapAAD(kekID, vm))
	if err != nil {
		return nil, fmt.Errorf("unwrap DEK with KEK %q: %w", kekID, ErrAuth)
	}
	return dek, nil
}

// DeriveObjectKey returns HKDF-SHA256(dek, salt=none, info=ObjectKeyInfo ‖
// objectID), 32 bytes. One key per object limits how much data any single
// AES-GCM key protects.
func DeriveObjectKey(dek []byte, id ObjectID) (Key, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("DEK is %d bytes, want %d: %w", len(dek), KeySize, ErrHeader)
	}
	info := append([]byte(ObjectKeyInfo), id[:]...)
	k, err := hkdf.Key(sha256.New, dek, nil, string(info), KeySize)
	if err != nil {
		return nil, fmt.Errorf("derive object key: %w", err)
	}
	return k, nil
}
