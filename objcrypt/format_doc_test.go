package objcrypt

// Tests that read docs/FORMAT.md, so its worked examples and tables cannot
// drift from the code (hand arithmetic in format docs goes stale: see
// rclone/rclone#9202). Each test names the FORMAT.md section it checks.

import (
	"bytes"
	"encoding/hex"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const formatDoc = "../docs/FORMAT.md"

// docSection returns the lines between <!-- name:begin --> and
// <!-- name:end --> in FORMAT.md.
func docSection(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(formatDoc)
	if err != nil {
		t.Fatalf("read %s: %v", formatDoc, err)
	}
	s := string(b)
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no %s … %s section", formatDoc, begin, end)
	}
	return strings.Split(strings.TrimSpace(s[i+len(begin):j]), "\n")
}

// tableRows returns the cells of a markdown table's body rows.
func tableRows(t *testing.T, lines []string) [][]string {
	t.Helper()
	var rows [][]string
	for i, l := range lines {
		if i < 2 { // header and alignment rows
			continue
		}
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "|") {
			t.Fatalf("not a table row: %q", l)
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		rows = append(rows, cells)
	}
	if len(rows) == 0 {
		t.Fatal("empty table")
	}
	return rows
}

func atoi(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("bad number %q in %s", s, formatDoc)
	}
	return n
}

// TestFormatSizeExamples checks every row of FORMAT.md §7 "Worked examples".
func TestFormatSizeExamples(t *testing.T) {
	for _, r := range tableRows(t, docSection(t, "size-examples")) {
		plain, full, cipher := atoi(t, r[0]), atoi(t, r[1]), atoi(t, r[3])
		if got := CipherSizeFromPlain(plain); got != cipher {
			t.Errorf("FORMAT.md says %d plaintext bytes take %d backing bytes; CipherSizeFromPlain = %d", plain, cipher, got)
		}
		if got, err := PlainSizeFromCipher(cipher); err != nil || got != plain {
			t.Errorf("FORMAT.md: PlainSizeFromCipher(%d) = %d, %v; want %d", cipher, got, err, plain)
		}
		if plain/PlainBlockSize != full {
			t.Errorf("FORMAT.md: %d bytes have %d full blocks, not %d", plain, plain/PlainBlockSize, full)
		}
		last := "–"
		if plain%PlainBlockSize != 0 {
			last = strconv.FormatUint(plain%PlainBlockSize, 10)
		}
		if r[2] != last {
			t.Errorf("FORMAT.md: %d bytes have a last block of %s, not %s", plain, last, r[2])
		}
		// the "computation" column adds up
		sum := uint64(0)
		expr := strings.Split(r[4], "(")[0]
		for _, term := range strings.Split(expr, "+") {
			prod := uint64(1)
			for _, f := range strings.Split(term, "×") {
				prod *= atoi(t, strings.TrimSpace(f))
			}
			sum += prod
		}
		if sum != cipher {
			t.Errorf("FORMAT.md: %q = %d, not %d", r[4], sum, cipher)
		}
	}
	// §7 prose: the malformed and small backwards examples
	for c := uint64(4097); c <= 4128; c++ {
		if _, err := PlainSizeFromCipher(c); err == nil {
			t.Errorf("FORMAT.md says %d is malformed", c)
		}
	}
	for c := uint64(8225); c <= 8256; c++ {
		if _, err := PlainSizeFromCipher(c); err == nil {
			t.Errorf("FORMAT.md says %d is malformed", c)
		}
	}
	if p, _ := PlainSizeFromCipher(4129); p != 1 {
		t.Error("FORMAT.md says 4129 is 1 byte")
	}
	if p, _ := PlainSizeFromCipher(8257); p != 4097 {
		t.Error("FORMAT.md says 8257 is 4097 bytes")
	}
	if MaxPlainSize != 9151873028817137791 {
		t.Errorf("FORMAT.md §7 gives MaxPlainSize as 9 151 873 028 817 137 791, code has %d", uint64(MaxPlainSize))
	}
}

// TestFormatOffsetExample checks FORMAT.md §7 "Offsets, worked".
func TestFormatOffsetExample(t *testing.T) {
	const off = 10000
	b := BlockOfPlainOffset(off)
	in := off - PlainOffsetOfBlock(b)
	at := CipherOffsetOfBlock(b)
	if b != 2 || in != 1808 || at != 12352 || at+NonceSize+in != 14176 {
		t.Errorf("byte 10000: block %d, +%d, stored at %d, ciphertext byte at %d", b, in, at, at+NonceSize+in)
	}
	first, count := BlockRange(10000, 10000)
	if first != 2 || count != 3 || CipherOffsetOfBlock(first) != 12352 || CipherOffsetOfBlock(first+count) != 24736 {
		t.Errorf("range [10000, 20000): blocks %d+%d, backing [%d, %d)", first, count,
			CipherOffsetOfBlock(first), CipherOffsetOfBlock(first+count))
	}
	// partly covered edges: 10000 is not a block start, 20000 not a block end
	if PlainOffsetOfBlock(2) == 10000 || PlainOffsetOfBlock(5) == 20000 {
		t.Error("the example's edges are not partial")
	}
}

// TestFormatHeaderLayout checks the field table of FORMAT.md §2 against
// the encoder, for a 1-byte and a 255-byte KEK id.
func TestFormatHeaderLayout(t *testing.T) {
	rows := tableRows(t, docSection(t, "header-layout"))
	for _, k := range []int{1, 13, 255} {
		h := testHeader(t)
		h.KEKID = strings.Repeat("k", k)
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		eval := func(s string) int { // "41+k", "k", "16"
			n := 0
			for _, term := range strings.Split(s, "+") {
				if term == "k" {
					n += k
				} else {
					n += int(atoi(t, term))
				}
			}
			return n
		}
		pos := 0
		for _, r := range rows {
			off, size := eval(r[0]), eval(r[1])
			if off != pos {
				t.Fatalf("k=%d: field %q at %d, but the previous field ended at %d", k, r[2], off, pos)
			}
			pos = off + size
		}
		if pos != len(enc) || len(enc) != 103+k {
			t.Fatalf("k=%d: table ends at %d, encoder wrote %d bytes, doc says 103+k", k, pos, len(enc))
		}
	}
}

// TestFormatHeaderExample checks the annotated header of FORMAT.md §2
// against vector "short", byte for byte.
func TestFormatHeaderExample(t *testing.T) {
	var short *vector
	for _, v := range loadVectors(t) {
		if v.Name == "short" {
			short = v
		}
	}
	if short == nil {
		t.Fatal("no vector short")
	}
	var all []byte
	for _, r := range tableRows(t, docSection(t, "header-example")) {
		b, err := hex.DecodeString(strings.Trim(r[3], "`"))
		if err != nil {
			t.Fatalf("bad hex in row %v", r)
		}
		if int(atoi(t, r[0])) != len(all) || int(atoi(t, r[1])) != len(b) {
			t.Fatalf("row %v: offset/size do not match the bytes", r)
		}
		all = append(all, b...)
	}
	if !bytes.Equal(all, short.HeaderXattr) {
		t.Fatalf("FORMAT.md header example\n%x\ndiffers from vector short\n%x", all, short.HeaderXattr)
	}
	// the other values §4–§6 quote from the same vector
	doc, _ := os.ReadFile(formatDoc)
	blocks := short.Blocks
	for name, want := range map[string]string{
		"policy JSON":   short.PolicyXattr,
		"object key":    hex.EncodeToString(short.ObjectKey),
		"wrap AAD":      "637279707464732076312064656b2077726170 000d 6b6d69702d7569642d30303031 " + hex.EncodeToString(short.VMID),
		"block nonce":   hex.EncodeToString(blocks[:NonceSize]),
		"block ct":      hex.EncodeToString(blocks[NonceSize : len(blocks)-TagSize]),
		"block tag":     hex.EncodeToString(blocks[len(blocks)-TagSize:]),
		"block AAD":     "0000000000000000 " + hex.EncodeToString(short.ObjectID),
		"stored length": "block is 47 bytes",
	} {
		if !bytes.Contains(doc, []byte(want)) {
			t.Errorf("FORMAT.md does not quote the %s of vector short: %s", name, want)
		}
	}
	if got := strings.ReplaceAll("637279707464732076312064656b2077726170 000d 6b6d69702d7569642d30303031 "+hex.EncodeToString(short.VMID), " ", ""); got != hex.EncodeToString(short.WrapAAD) {
		t.Error("FORMAT.md wrap AAD example is not the vector's")
	}
	if len(blocks) != 47 {
		t.Errorf("vector short has %d stored bytes", len(blocks))
	}
}

// TestFormatPolicyFields checks the field table of FORMAT.md §4 against the
// Policy struct's JSON tags, in order.
func TestFormatPolicyFields(t *testing.T) {
	var doc []string
	for _, r := range tableRows(t, docSection(t, "policy-layout")) {
		doc = append(doc, strings.Trim(r[0], "`"))
	}
	var code []string
	pt := reflect.TypeFor[Policy]()
	for i := range pt.NumField() {
		code = append(code, strings.Split(pt.Field(i).Tag.Get("json"), ",")[0])
	}
	if !reflect.DeepEqual(doc, code) {
		t.Fatalf("FORMAT.md §4 lists %v, Policy has %v", doc, code)
	}
}

// TestFormatRecipePython runs the Python recipe of FORMAT.md §8 on every
// test vector. It needs python3 with the `cryptography` package (Debian
// python3-cryptography, pulled in by python3-pykmip in CI).
func TestFormatRecipePython(t *testing.T) {
	lines := docSection(t, "recipe")
	if len(lines) < 3 || lines[0] != "```python" || lines[len(lines)-1] != "```" {
		t.Fatal("FORMAT.md recipe is not one python code block")
	}
	script := filepath.Join(t.TempDir(), "decrypt.py")
	if err := os.WriteFile(script, []byte(strings.Join(lines[1:len(lines)-1], "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	if err := exec.Command("python3", "-c", "import cryptography.hazmat.primitives.ciphers.aead").Run(); err != nil {
		t.Skip("python3 cryptography package not installed")
	}
	for _, v := range loadVectors(t) {
		backing := filepath.Join(t.TempDir(), v.Name)
		if err := os.WriteFile(backing, append(bytes.Clone(v.HeaderRegion), v.Blocks...), 0o644); err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd := exec.Command("python3", script, backing, hex.EncodeToString(v.KEK))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: recipe failed: %v\n%s", v.Name, err, stderr.String())
		}
		if !bytes.Equal(out, v.Plaintext) {
			t.Fatalf("%s: the recipe decrypted %d bytes that differ from the plaintext", v.Name, len(out))
		}
	}
}

// TestDocsNameRealTests: every Test/Fuzz name that FORMAT.md and
// THREAT-MODEL.md cite as the assertion of a claim exists in this package,
// and every tamper test of tamper_test.go is cited by THREAT-MODEL.md.
func TestDocsNameRealTests(t *testing.T) {
	funcs := map[string]bool{}
	files, _ := filepath.Glob("*_test.go")
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				funcs[fd.Name.Name] = true
			}
		}
	}
	cited := regexp.MustCompile("`((?:Test|Fuzz)[A-Za-z0-9]+)`")
	threat := ""
	for _, doc := range []string{formatDoc, "../docs/THREAT-MODEL.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(doc, "THREAT-MODEL.md") {
			threat = string(b)
		}
		for _, m := range cited.FindAllStringSubmatch(string(b), -1) {
			if !funcs[m[1]] {
				t.Errorf("%s cites %s, which does not exist", doc, m[1])
			}
		}
	}
	// Tests of other packages are cited qualified: `fs.TestX`.
	qualified := regexp.MustCompile("`([a-z]+)\\.((?:Test|Fuzz)[A-Za-z0-9]+)`")
	for _, m := range qualified.FindAllStringSubmatch(threat, -1) {
		if !funcIn(t, filepath.Join("..", m[1]), m[2]) {
			t.Errorf("THREAT-MODEL.md cites %s.%s, which does not exist", m[1], m[2])
		}
	}
	for name := range funcs {
		if strings.HasPrefix(name, "TestTamper") || strings.HasPrefix(name, "TestNotDetected") || strings.HasPrefix(name, "TestNotProtected") {
			if !strings.Contains(threat, "`"+name+"`") {
				t.Errorf("THREAT-MODEL.md does not cite %s", name)
			}
		}
	}
}

// funcIn reports whether a _test.go file of directory dir declares the
// top-level function name.
func funcIn(t *testing.T, dir, name string) bool {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == name {
				return true
			}
		}
	}
	return false
}
