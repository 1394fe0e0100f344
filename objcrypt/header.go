package objcrypt

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// Format constants. They are part of the on-disk format and never change for
// v1; a new layout gets a new Version, a new cipher construction a new Suite.
const (
	// Version1 is the only header version this build writes and reads.
	Version1 uint16 = 1
	// SuiteAES256GCM: HKDF-SHA256 object keys, AES-256-GCM blocks with
	// 16-byte random nonces, AES-256-GCM DEK wrap with 12-byte nonces.
	SuiteAES256GCM uint16 = 1
	// ObjectIDSize is the random per-object id bound into every block.
	ObjectIDSize = 16
	// VMIDSize is the random per-VM id bound into the DEK wrap.
	VMIDSize = 16
	// MaxKEKIDLen bounds the KMS key id (KMIP unique identifiers are short).
	MaxKEKIDLen = 255
	// MaxWrappedDEKLen bounds the wrapped DEK field in any version. Suite
	// AES256GCM requires exactly WrappedDEKSize bytes.
	MaxWrappedDEKLen = 1024
)

// HeaderMagic starts every header, in the xattr and in the in-file region.
var HeaderMagic = [4]byte{'C', 'D', 'S', 'H'}

// ObjectID identifies one encrypted object; it is the HKDF info suffix and
// part of every block's associated data.
type ObjectID [ObjectIDSize]byte

// VMID identifies the VM whose DEK an object uses.
type VMID [VMIDSize]byte

// Header is the per-object header. It carries everything needed to decrypt
// the object given the KMS: which KEK, the wrapped DEK and the ids bound into
// the AEADs.
type Header struct {
	Version    uint16   // Version1
	Suite      uint16   // SuiteAES256GCM
	ObjectID   ObjectID // random per object: HKDF info and block AAD
	VMID       VMID     // random per VM: DEK-wrap AAD, so one file unwraps on its own
	KEKID      string   // KMS id of the KEK, 1..MaxKEKIDLen bytes of UTF-8
	WrappedDEK []byte   // WrapDEK output, WrappedDEKSize bytes
}

// fixed part: magic(4) version(2) suite(2) objectID(16) vmID(16) kekIDLen(1)
const headerFixedLen = 4 + 2 + 2 + ObjectIDSize + VMIDSize + 1

// MarshalBinary encodes h as stored in the user.cryptds.hdr xattr.
func (h *Header) MarshalBinary() ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, headerFixedLen+len(h.KEKID)+2+len(h.WrappedDEK))
	b = append(b, HeaderMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, h.Suite)
	b = append(b, h.ObjectID[:]...)
	b = append(b, h.VMID[:]...)
	b = append(b, byte(len(h.KEKID)))
	b = append(b, h.KEKID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.WrappedDEK)))
	b = append(b, h.WrappedDEK...)
	return b, nil
}

func (h *Header) validate() error {
	if h.Version != Version1 {
		return fmt.Errorf("header version %d: %w", h.Version, ErrVersion)
	}
	if h.Suite != SuiteAES256GCM {
		return fmt.Errorf("header suite %d: %w", h.Suite, ErrVersion)
	}
	if err := checkKEKID(h.KEKID); err != nil {
		return err
	}
	if len(h.WrappedDEK) != WrappedDEKSize {
		return fmt.Errorf("wrapped DEK length %d, want %d: %w", len(h.WrappedDEK), WrappedDEKSize, ErrHeader)
	}
	return nil
}

// ParseHeader decodes the xattr form of a header. Every length is checked;
// trailing bytes are an error. It never panics.
func ParseHeader(b []byte) (*Header, error) {
	h, n, err := parseHeaderPrefix(b)
	if err != nil {
		return nil, err
	}
	if n != len(b) {
		return nil, fmt.Errorf("header has %d trailing bytes: %w", len(b)-n, ErrHeader)
	}
	return h, nil
}

func parseHeaderPrefix(b []byte) (*Header, int, error) {
	if len(b) < headerFixedLen {
		return nil, 0, fmt.Errorf("header is %d bytes, shorter than the %d-byte fixed part: %w", len(b), headerFixedLen, ErrHeader)
	}
	if !bytes.Equal(b[:4], HeaderMagic[:]) {
		return nil, 0, fmt.Errorf("bad header magic %x: %w", b[:4], ErrHeader)
	}
	h := &Header{
		Version: binary.BigEndian.Uint16(b[4:6]),
		Suite:   binary.BigEndian.Uint16(b[6:8]),
	}
	if h.Version != Version1 {
		return nil, 0, fmt.Errorf("header version %d: %w", h.Version, ErrVersion)
	}
	if h.Suite != SuiteAES256GCM {
		return nil, 0, fmt.Errorf("header suite %d: %w", h.Suite, ErrVersion)
	}
	p := 8
	copy(h.ObjectID[:], b[p:p+ObjectIDSize])
	p += ObjectIDSize
	copy(h.VMID[:], b[p:p+VMIDSize])
	p += VMIDSize
	kekLen := int(b[p])
	p++
	if kekLen == 0 {
		return nil, 0, fmt.Errorf("empty KEK id: %w", ErrHeader)
	}
	if len(b) < p+kekLen+2 {
		return nil, 0, fmt.Errorf("header truncated in KEK id: %w", ErrHeader)
	}
	h.KEKID = string(b[p : p+kekLen])
	if err := checkKEKID(h.KEKID); err != nil {
		return nil, 0, err
	}
	p += kekLen
	wLen := int(binary.BigEndian.Uint16(b[p : p+2]))
	p += 2
	if wLen != WrappedDEKSize {
		return nil, 0, fmt.Errorf("wrapped DEK length %d, want %d: %w", wLen, WrappedDEKSize, ErrHeader)
	}
	if len(b) < p+wLen {
		return nil, 0, fmt.Errorf("header truncated in wrapped DEK: %w", ErrHeader)
	}
	h.WrappedDEK = bytes.Clone(b[p : p+wLen])
	p += wLen
	return h, p, nil
}

// MarshalRegion encodes h as the fixed-size in-file header region: the xattr
// bytes followed by zero padding up to HeaderRegionSize.
func (h *Header) MarshalRegion() ([]byte, error) {
	b, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(b) > HeaderRegionSize {
		return nil, fmt.Errorf("header of %d bytes does not fit the region: %w", len(b), ErrHeader)
	}
	r := make([]byte, HeaderRegionSize)
	copy(r, b)
	return r, nil
}

// ParseRegion decodes an in-file header region. The padding after the header
// must be all zero so nothing can hide there.
func ParseRegion(r []byte) (*Header, error) {
	if len(r) != HeaderRegionSize {
		return nil, fmt.Errorf("header region is %d bytes, want %d: %w", len(r), HeaderRegionSize, ErrHeader)
	}
	h, n, err := parseHeaderPrefix(r)
	if err != nil {
		return nil, err
	}
	for _, c := range r[n:] {
		if c != 0 {
			return nil, fmt.Errorf("non-zero bytes in header region padding: %w", ErrHeader)
		}
	}
	return h, nil
}

// Equal reports whether two headers carry the same fields; the xattr and the
// in-file copy must agree.
func (h *Header) Equal(o *Header) bool {
	return h.Version == o.Version && h.Suite == o.Suite && h.ObjectID == o.ObjectID &&
		h.VMID == o.VMID && h.KEKID == o.KEKID && bytes.Equal(h.WrappedDEK, o.WrappedDEK)
}

// MarshalText encodes the id as lower-case hex (JSON, logs).
func (id ObjectID) MarshalText() ([]byte, error) { return hexText(id[:]), nil }

// UnmarshalText decodes a hex id.
func (id *ObjectID) UnmarshalText(b []byte) error { return unhexText(id[:], b) }

// String is the hex form.
func (id ObjectID) String() string { return string(hexText(id[:])) }

// MarshalText encodes the id as lower-case hex (JSON, logs).
func (id VMID) MarshalText() ([]byte, error) { return hexText(id[:]), nil }

// UnmarshalText decodes a hex id.
func (id *VMID) UnmarshalText(b []byte) error { return unhexText(id[:], b) }

// String is the hex form.
func (id VMID) String() string { return string(hexText(id[:])) }

func hexText(b []byte) []byte { return []byte(hex.EncodeToString(b)) }

func unhexText(dst, src []byte) error {
	if len(src) != 2*len(dst) {
		return fmt.Errorf("id %q is not %d hex digits: %w", src, 2*len(dst), ErrHeader)
	}
	if _, err := hex.Decode(dst, src); err != nil {
		return fmt.Errorf("id %q: %v: %w", src, err, ErrHeader)
	}
	return nil
}
