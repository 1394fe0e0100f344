package objcrypt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func testHeader(t testing.TB) *Header {
	t.Helper()
	v := newTestVM(t, "hdr")
	id, err := NewObjectID(newDetReader("hdr-obj"))
	if err != nil {
		t.Fatal(err)
	}
	return v.policy().NewHeader(id)
}

// TestHeaderLayout checks every field sits where docs/FORMAT.md §2 says.
func TestHeaderLayout(t *testing.T) {
	h := testHeader(t)
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	k := len(h.KEKID)
	if len(b) != 103+k {
		t.Fatalf("header is %d bytes, want 103+len(KEK id) = %d", len(b), 103+k)
	}
	checks := []struct {
		name     string
		from, to int
		want     []byte
	}{
		{"magic", 0, 4, []byte("CDSH")},
		{"version", 4, 6, []byte{0, 1}},
		{"suite", 6, 8, []byte{0, 1}},
		{"object id", 8, 24, h.ObjectID[:]},
		{"vm id", 24, 40, h.VMID[:]},
		{"kek id length", 40, 41, []byte{byte(k)}},
		{"kek id", 41, 41 + k, []byte(h.KEKID)},
		{"wrapped length", 41 + k, 43 + k, []byte{0, 60}},
		{"wrapped dek", 43 + k, 103 + k, h.WrappedDEK},
	}
	for _, c := range checks {
		if !bytes.Equal(b[c.from:c.to], c.want) {
			t.Errorf("%s at [%d:%d] = %x, want %x", c.name, c.from, c.to, b[c.from:c.to], c.want)
		}
	}
	r, err := h.MarshalRegion()
	if err != nil {
		t.Fatal(err)
	}
	if len(r) != HeaderRegionSize || !bytes.Equal(r[:len(b)], b) || !isZero(r[len(b):]) {
		t.Fatal("region is not header ‖ zero padding to 4096 bytes")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, kekID := range []string{"k", "kmip-uid-1234", strings.Repeat("é", 127) + "x", strings.Repeat("z", MaxKEKIDLen)} {
		t.Run(fmt.Sprint(len(kekID)), func(t *testing.T) {
			h := testHeader(t)
			h.KEKID = kekID
			b, err := h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(h) {
				t.Fatalf("ParseHeader(MarshalBinary(h)) = %+v, want %+v", got, h)
			}
			// the parsed header must not alias the input
			b[len(b)-1] ^= 1
			if !got.Equal(h) {
				t.Fatal("parsed header aliases its input")
			}
			r, err := h.MarshalRegion()
			if err != nil {
				t.Fatal(err)
			}
			got, err = ParseRegion(r)
			if err != nil || !got.Equal(h) {
				t.Fatalf("ParseRegion(MarshalRegion(h)) = %+v, %v", got, err)
			}
		})
	}
}

// TestParseHeaderStrict: every malformation of issue 2 gives the right
// sentinel, and nothing panics.
func TestParseHeaderStrict(t *testing.T) {
	h := testHeader(t)
	good, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	k := len(h.KEKID)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrHeader},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), ErrHeader},
		{"lower-case magic", mod(func(b []byte) []byte { copy(b, "cdsh"); return b }), ErrHeader},
		{"version 0", mod(func(b []byte) []byte { b[5] = 0; return b }), ErrVersion},
		{"version 2", mod(func(b []byte) []byte { b[5] = 2; return b }), ErrVersion},
		{"version 0x0101", mod(func(b []byte) []byte { b[4] = 1; return b }), ErrVersion},
		{"suite 0", mod(func(b []byte) []byte { b[7] = 0; return b }), ErrVersion},
		{"suite 2", mod(func(b []byte) []byte { b[7] = 2; return b }), ErrVersion},
		{"zero-length KEK id", mod(func(b []byte) []byte {
			return append(append(b[:40:40], 0), b[41+k:]...)
		}), ErrHeader},
		{"KEK id not UTF-8", mod(func(b []byte) []byte { b[41] = 0xff; return b }), ErrHeader},
		{"KEK id length too long", mod(func(b []byte) []byte { b[40]++; return b }), ErrHeader},
		{"KEK id length too short", mod(func(b []byte) []byte { b[40]--; return b }), ErrHeader},
		{"wrapped length 59", mod(func(b []byte) []byte { b[42+k] = 59; return b[:len(b)-1] }), ErrHeader},
		{"wrapped length 61", mod(func(b []byte) []byte { b[42+k] = 61; return append(b, 0) }), ErrHeader},
		{"wrapped length 0", mod(func(b []byte) []byte { b[42+k] = 0; return b[:43+k] }), ErrHeader},
		{"wrapped length 0x013c", mod(func(b []byte) []byte { b[41+k] = 1; return b }), ErrHeader},
		{"one trailing byte", append(bytes.Clone(good), 0), ErrHeader},
		{"trailing header", append(bytes.Clone(good), good...), ErrHeader},
		{"region given as xattr", func() []byte { r, _ := h.MarshalRegion(); return r }(), ErrHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHeader(tc.in)
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("ParseHeader = %v, %v; want nil, %v", got, err, tc.want)
			}
		})
	}
	// every truncation
	for n := range len(good) {
		if _, err := ParseHeader(good[:n]); !errors.Is(err, ErrHeader) {
			t.Errorf("ParseHeader of the first %d bytes: %v, want ErrHeader", n, err)
		}
	}
	// every single-bit flip either fails to parse or changes a field (the
	// codec is injective); what a changed field does is TestTamperHeader's job
	for i := range len(good) * 8 {
		b := bytes.Clone(good)
		b[i/8] ^= 1 << (i % 8)
		got, err := ParseHeader(b)
		if err == nil && got.Equal(h) {
			t.Fatalf("flipping bit %d gave the same header", i)
		}
		if err != nil && !errors.Is(err, ErrHeader) && !errors.Is(err, ErrVersion) {
			t.Fatalf("flipping bit %d: %v is neither ErrHeader nor ErrVersion", i, err)
		}
	}
}

func TestParseRegionStrict(t *testing.T) {
	h := testHeader(t)
	good, err := h.MarshalRegion()
	if err != nil {
		t.Fatal(err)
	}
	hlen := 103 + len(h.KEKID)
	for _, n := range []int{0, 1, hlen, HeaderRegionSize - 1, HeaderRegionSize + 1, 2 * HeaderRegionSize} {
		r := make([]byte, n)
		copy(r, good)
		if _, err := ParseRegion(r); !errors.Is(err, ErrHeader) {
			t.Errorf("ParseRegion of %d bytes: %v, want ErrHeader", n, err)
		}
	}
	for _, at := range []int{hlen, hlen + 1, 2048, HeaderRegionSize - 1} {
		r := bytes.Clone(good)
		r[at] = 1
		if _, err := ParseRegion(r); !errors.Is(err, ErrHeader) {
			t.Errorf("ParseRegion with non-zero padding at %d: %v, want ErrHeader", at, err)
		}
	}
	// an all-zero region (a file whose header region was never written or was
	// punched out) is not a header
	if _, err := ParseRegion(make([]byte, HeaderRegionSize)); !errors.Is(err, ErrHeader) {
		t.Errorf("ParseRegion(zeros): %v, want ErrHeader", err)
	}
	r := bytes.Clone(good)
	r[5] = 9
	if _, err := ParseRegion(r); !errors.Is(err, ErrVersion) {
		t.Errorf("ParseRegion with version 9: %v, want ErrVersion", err)
	}
}

func TestMarshalHeaderValidates(t *testing.T) {
	tests := []struct {
		name string
		mod  func(h *Header)
		want error
	}{
		{"version 0", func(h *Header) { h.Version = 0 }, ErrVersion},
		{"version 2", func(h *Header) { h.Version = 2 }, ErrVersion},
		{"suite 7", func(h *Header) { h.Suite = 7 }, ErrVersion},
		{"empty KEK id", func(h *Header) { h.KEKID = "" }, ErrHeader},
		{"KEK id 256 bytes", func(h *Header) { h.KEKID = strings.Repeat("a", 256) }, ErrHeader},
		{"KEK id not UTF-8", func(h *Header) { h.KEKID = "a\xffb" }, ErrHeader},
		{"wrapped DEK short", func(h *Header) { h.WrappedDEK = h.WrappedDEK[:59] }, ErrHeader},
		{"wrapped DEK nil", func(h *Header) { h.WrappedDEK = nil }, ErrHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := testHeader(t)
			tc.mod(h)
			if _, err := h.MarshalBinary(); !errors.Is(err, tc.want) {
				t.Errorf("MarshalBinary: %v, want %v", err, tc.want)
			}
			if _, err := h.MarshalRegion(); !errors.Is(err, tc.want) {
				t.Errorf("MarshalRegion: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestHeaderEqual(t *testing.T) {
	a := testHeader(t)
	mods := []func(h *Header){
		func(h *Header) { h.ObjectID[0] ^= 1 },
		func(h *Header) { h.VMID[15] ^= 1 },
		func(h *Header) { h.KEKID += "x" },
		func(h *Header) { h.WrappedDEK[0] ^= 1 },
		func(h *Header) { h.Version++ },
		func(h *Header) { h.Suite++ },
	}
	for i, m := range mods {
		b := testHeader(t)
		if !a.Equal(b) {
			t.Fatal("equal headers compare unequal")
		}
		m(b)
		if a.Equal(b) || b.Equal(a) {
			t.Errorf("modification %d not seen by Equal", i)
		}
	}
}

func TestIDText(t *testing.T) {
	id := ObjectID{0x00, 0x01, 0xab, 0xff, 15: 0x7f}
	txt, err := id.MarshalText()
	if err != nil || string(txt) != "0001abff00000000000000000000007f" || id.String() != string(txt) {
		t.Fatalf("MarshalText = %s, %v", txt, err)
	}
	var back ObjectID
	if err := back.UnmarshalText(txt); err != nil || back != id {
		t.Fatalf("UnmarshalText = %x, %v", back, err)
	}
	vm := VMID(id)
	var vback VMID
	if vt, _ := vm.MarshalText(); vback.UnmarshalText(vt) != nil || vback != vm || vm.String() != string(vt) {
		t.Fatal("VMID text round trip failed")
	}
	for _, bad := range []string{"", "00", strings.Repeat("0", 31), strings.Repeat("0", 33), strings.Repeat("g", 32)} {
		if err := back.UnmarshalText([]byte(bad)); !errors.Is(err, ErrHeader) {
			t.Errorf("ObjectID.UnmarshalText(%q): %v, want ErrHeader", bad, err)
		}
		if err := vback.UnmarshalText([]byte(bad)); !errors.Is(err, ErrHeader) {
			t.Errorf("VMID.UnmarshalText(%q): %v, want ErrHeader", bad, err)
		}
	}
}

func testPolicy(t testing.TB) *Policy {
	p := newTestVM(t, "pol").policy()
	p.KMS = "kms-a.example:5696"
	p.Created = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	return p
}

// TestPolicyLayout pins the JSON of docs/FORMAT.md §4.
func TestPolicyLayout(t *testing.T) {
	p := testPolicy(t)
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"v":1,"vm_id":"%s","kek_id":"kek-pol","kms":"kms-a.example:5696","wrapped_dek":"%s","created":"2025-03-01T12:00:00Z"}`,
		p.VMID, mustJSONBytes(p.WrappedDEK))
	if string(b) != want {
		t.Fatalf("policy JSON\n got %s\nwant %s", b, want)
	}
	p.Rotated = p.Created.Add(time.Hour)
	p.KMS = ""
	b, _ = p.MarshalBinary()
	if !strings.Contains(string(b), `"rotated":"2025-03-01T13:00:00Z"`) || strings.Contains(string(b), `"kms"`) {
		t.Fatalf("optional fields wrong: %s", b)
	}
}

func mustJSONBytes(b []byte) string {
	j, _ := json.Marshal(b)
	return strings.Trim(string(j), `"`)
}

func TestPolicyRoundTrip(t *testing.T) {
	p := testPolicy(t)
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.VMID != p.VMID || got.KEKID != p.KEKID || !bytes.Equal(got.WrappedDEK, p.WrappedDEK) ||
		!got.Created.Equal(p.Created) || got.KMS != p.KMS || !got.Rotated.IsZero() {
		t.Fatalf("ParsePolicy(MarshalBinary(p)) = %+v", got)
	}
	// reformatted JSON still parses and re-encodes to the canonical bytes
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	pretty, _ := json.MarshalIndent(m, "", "  ")
	got, err = ParsePolicy(append(pretty, '\n', ' '))
	if err != nil {
		t.Fatalf("ParsePolicy(indented): %v", err)
	}
	if again, _ := got.MarshalBinary(); !bytes.Equal(again, b) {
		t.Fatalf("canonical form differs:\n%s\n%s", again, b)
	}
	h := got.NewHeader(ObjectID{1})
	if h.Version != Version1 || h.Suite != SuiteAES256GCM || h.VMID != p.VMID || h.KEKID != p.KEKID ||
		!bytes.Equal(h.WrappedDEK, p.WrappedDEK) || h.ObjectID != (ObjectID{1}) {
		t.Fatalf("NewHeader = %+v", h)
	}
	h.WrappedDEK[0] ^= 1
	if got.WrappedDEK[0] == h.WrappedDEK[0] {
		t.Fatal("NewHeader aliases the policy's wrapped DEK")
	}
}

func TestParsePolicyStrict(t *testing.T) {
	good, err := testPolicy(t).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := string(good)
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrHeader},
		{"not JSON", "encrypted", ErrHeader},
		{"array", "[]", ErrHeader},
		{"trailing brace", s + "}", ErrHeader},
		{"trailing bracket", s + "]", ErrHeader},
		{"trailing object", s + s, ErrHeader},
		{"trailing garbage", s + "x", ErrHeader},
		{"unknown field", strings.Replace(s, `{"v":1,`, `{"v":1,"extra":true,`, 1), ErrHeader},
		{"version 2", strings.Replace(s, `"v":1`, `"v":2`, 1), ErrVersion},
		{"version missing", strings.Replace(s, `"v":1,`, ``, 1), ErrVersion},
		{"version string", strings.Replace(s, `"v":1`, `"v":"1"`, 1), ErrHeader},
		{"empty kek id", strings.Replace(s, `"kek_id":"kek-pol"`, `"kek_id":""`, 1), ErrHeader},
		{"long kek id", strings.Replace(s, `"kek_id":"kek-pol"`, `"kek_id":"`+strings.Repeat("k", 256)+`"`, 1), ErrHeader},
		{"bad vm id", strings.Replace(s, `"vm_id":"`, `"vm_id":"zz`, 1), ErrHeader},
		{"short wrapped dek", strings.Replace(s, `"wrapped_dek":"`, `"wrapped_dek":"AAAA`, 1), ErrHeader},
		{"bad base64", strings.Replace(s, `"wrapped_dek":"`, `"wrapped_dek":"*`, 1), ErrHeader},
		{"bad time", strings.Replace(s, `"created":"2025`, `"created":"x2025`, 1), ErrHeader},
		{"too big", s[:len(s)-1] + `,"kms":"` + strings.Repeat(" ", MaxPolicySize) + `"}`, ErrHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePolicy([]byte(tc.in))
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("ParsePolicy = %v, %v; want nil, %v", got, err, tc.want)
			}
		})
	}
}

func TestMarshalPolicyValidates(t *testing.T) {
	tests := []struct {
		name string
		mod  func(p *Policy)
		want error
	}{
		{"version 0", func(p *Policy) { p.Version = 0 }, ErrVersion},
		{"empty KEK id", func(p *Policy) { p.KEKID = "" }, ErrHeader},
		{"KEK id not UTF-8", func(p *Policy) { p.KEKID = "\xc3" }, ErrHeader},
		{"wrapped DEK long", func(p *Policy) { p.WrappedDEK = append(p.WrappedDEK, 0) }, ErrHeader},
	}
	for _, tc := range tests {
		p := testPolicy(t)
		tc.mod(p)
		if _, err := p.MarshalBinary(); !errors.Is(err, tc.want) {
			t.Errorf("%s: MarshalBinary: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestHeaderFitsRegion: the largest v1 header fits the region with room to
// spare for v2 (which may add fields).
func TestHeaderFitsRegion(t *testing.T) {
	h := testHeader(t)
	h.KEKID = strings.Repeat("k", MaxKEKIDLen)
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 358 || len(b) > HeaderRegionSize/8 {
		t.Fatalf("largest header is %d bytes", len(b))
	}
	if binary.BigEndian.Uint16(b[len(b)-62:]) != WrappedDEKSize {
		t.Fatal("wrapped length field misplaced")
	}
}
