package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// checkTLSFlags refuses (exit 2) a --kmip connection whose TLS files are
// not given or cannot be read, naming the flags: a missing file is an
// operator's typo, not an unreachable key server, and must not surface as
// the client library's field names (CAFile...) with exit 4.
func checkTLSFlags(c *cli.Context) error {
	var missing []string
	for _, name := range []string{"kmip-ca", "kmip-cert", "kmip-key"} {
		if c.String(name) == "" {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		return withCode(ExitUsage, fmt.Errorf("--kmip needs mutual TLS files: give %s (or --dev for the built-in dev KMS)", strings.Join(missing, ", ")))
	}
	for _, name := range []string{"kmip-ca", "kmip-cert", "kmip-key"} {
		f, err := os.Open(c.String(name))
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return withCode(ExitUsage, fmt.Errorf("--%s %s: %w", name, c.String(name), err))
		}
		f.Close()
	}
	return nil
}
