//go:build !race

package objcrypt

// raceEnabled: see race_on_test.go.
const raceEnabled = false
