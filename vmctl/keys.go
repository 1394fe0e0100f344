package vmctl

import (
	"fmt"
	"strings"

	"github.com/pkg/xattr"
)

// KeysAttr is the mount's read-only virtual xattr on a VM directory that
// lists every KEK the VM had, from the mount's own record.
const KeysAttr = "user.cryptds.keys"

// KEKInfo is one KEK of a VM as the mount records it.
type KEKInfo struct {
	ID string `json:"id"`
	// State is "current", "retired" (replaced by a rekey) or "destroyed".
	State string `json:"state"`
	// Since and Until bound the time the KEK was the VM's current one
	// (RFC 3339; "-" when unknown, Until empty while current): a
	// ciphertext backup taken in that time needs this KEK.
	Since     string `json:"since"`
	Until     string `json:"until,omitempty"`
	Destroyed string `json:"destroyed,omitempty"`
}

// vmKeys reads the KEK list of the VM directory at path.
func vmKeys(path string) ([]KEKInfo, error) {
	raw, err := xattr.Get(path, KeysAttr)
	if err != nil {
		return nil, fmt.Errorf("read %s of %s: %w", KeysAttr, path, err)
	}
	return parseKeys(string(raw)), nil
}

// parseKeys decodes the KEK lines of a KeysAttr value (the first line
// names the VM and is skipped).
func parseKeys(s string) []KEKInfo {
	var out []KEKInfo
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(line, "kek=") {
			continue
		}
		var k KEKInfo
		for _, f := range strings.Fields(line) {
			key, val, _ := strings.Cut(f, "=")
			switch key {
			case "kek":
				k.ID = val
			case "state":
				k.State = val
			case "since":
				k.Since = val
			case "until":
				k.Until = val
			case "destroyed":
				k.Destroyed = val
			}
		}
		out = append(out, k)
	}
	return out
}
