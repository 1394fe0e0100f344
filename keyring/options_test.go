package keyring_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/cryptds/cryptds/keyring"
)

func TestParseCacheMode(t *testing.T) {
	tests := []struct {
		in      string
		want    keyring.CacheMode
		wantErr bool
	}{
		{"memory", keyring.CacheMemory, false},
		{"disk", keyring.CacheDisk, false},
		{"off", keyring.CacheOff, false},
		{"", 0, true},
		{"Memory", 0, true},
		{"none", 0, true},
	}
	for _, tc := range tests {
		got, err := keyring.ParseCacheMode(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseCacheMode(%q) = %v, %v", tc.in, got, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
	if keyring.DefaultOptions().Cache != keyring.CacheMode(0) {
		t.Error("the zero CacheMode is not the default")
	}
}

// TestDefaultsDocumented keeps the "Default: X." in each Options field's doc
// comment equal to what DefaultOptions returns, so prose and code cannot
// drift (badger's v2 options.go did).
func TestDefaultsDocumented(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "options.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	def := reflect.ValueOf(keyring.DefaultOptions())
	re := regexp.MustCompile(`Default: ([^ ]+?)\.\s*$`)
	checked := 0
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok || ts.Name.Name != "Options" {
			return true
		}
		for _, fld := range ts.Type.(*ast.StructType).Fields.List {
			m := re.FindStringSubmatch(fld.Doc.Text())
			if m == nil {
				continue
			}
			name := fld.Names[0].Name
			v := def.FieldByName(name).Interface()
			switch v := v.(type) {
			case time.Duration:
				d, err := time.ParseDuration(m[1])
				if err != nil || d != v {
					t.Errorf("Options.%s documents default %q, DefaultOptions has %v", name, m[1], v)
				}
			case keyring.CacheMode:
				if v.String() != m[1] {
					t.Errorf("Options.%s documents default %q, DefaultOptions has %v", name, m[1], v)
				}
			default:
				t.Errorf("Options.%s: no check for %T", name, v)
			}
			checked++
		}
		return false
	})
	if checked < 3 {
		t.Fatalf("checked %d documented defaults, want at least 3 (Cache, TTL, Refresh)", checked)
	}
}
