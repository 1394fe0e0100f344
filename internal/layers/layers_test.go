// Package layers turns the package layering of DESIGN.md into a test
// failure: dependencies point one way, cmd -> fs -> keyring ->
// kmipclient/objcrypt, and the format package stays pure.
package layers

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/cryptds/cryptds"

// deps returns every package pkg imports, directly or not (tests excluded).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var list []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Standard   bool
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		if !p.Standard && p.ImportPath != pkg {
			list = append(list, p.ImportPath)
		}
	}
	return list
}

func TestLayering(t *testing.T) {
	tests := []struct {
		pkg     string
		allowed []string // prefixes of non-standard imports that are allowed
	}{
		{module + "/objcrypt", []string{"golang.org/x/crypto", "golang.org/x/sys/cpu"}},
		{module + "/kmipclient", []string{"github.com/ovh/kmip-go", "golang.org/x/"}},
		{module + "/journal", []string{"golang.org/x/sys/unix"}},             // a leaf: it knows nothing of blocks or keys
		{module + "/vmreg", []string{module + "/objcrypt", "golang.org/x/"}}, // the mount's VM record: format types only
		{module + "/keyring", []string{module + "/kmipclient", module + "/objcrypt", "github.com/dgraph-io/", "github.com/ovh/kmip-go",
			"golang.org/x/", "github.com/cespare/", "github.com/dustin/", "github.com/google/flatbuffers", "github.com/klauspost/",
			"google.golang.org/protobuf", "go.opentelemetry.io/", "github.com/go-logr/", "github.com/pkg/errors"}},
	}
	for _, tc := range tests {
		t.Run(tc.pkg, func(t *testing.T) {
			for _, d := range deps(t, tc.pkg) {
				ok := false
				for _, a := range tc.allowed {
					if strings.HasPrefix(d, a) {
						ok = true
						break
					}
				}
				if !ok {
					t.Errorf("%s must not import %s", tc.pkg, d)
				}
			}
		})
	}
}

// TestNoUpwardImports checks that no package imports one above it.
func TestNoUpwardImports(t *testing.T) {
	forbidden := map[string][]string{
		"objcrypt":   {"keyring", "kmipclient", "fs", "devkms", "cmd/"},
		"kmipclient": {"keyring", "fs", "objcrypt", "devkms", "cmd/"},
		"keyring":    {"fs", "devkms", "cmd/"},
		"fs":         {"kmipclient", "devkms", "keyring", "vmctl", "fsck", "metrics", "cmd/"},
		"vmctl":      {"fs", "keyring", "kmipclient", "devkms", "fsck", "metrics", "cmd/"},
		"fsck":       {"fs", "keyring", "kmipclient", "devkms", "vmctl", "metrics", "cmd/"},
		"metrics":    {"devkms", "vmctl", "fsck", "cmd/"},
		"devkms":     {"objcrypt", "keyring", "kmipclient", "fs", "vmctl", "fsck", "metrics", "cmd/"},
		"vmreg":      {"keyring", "kmipclient", "fs", "devkms", "vmctl", "fsck", "metrics", "cmd/"},
	}
	for pkg, bad := range forbidden {
		full := module + "/" + pkg
		for _, d := range deps(t, full) {
			for _, b := range bad {
				if strings.HasPrefix(d, module+"/"+b) {
					t.Errorf("%s imports %s (layer above it)", full, d)
				}
			}
		}
	}
}
