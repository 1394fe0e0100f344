package objcrypt

import "testing"

// TestIsZero checks the fast hole test against the plain word loop at every
// length around the word, block and stored-block sizes, with a single
// non-zero byte near each end and at a stride in between.
func TestIsZero(t *testing.T) {
	var lengths []int
	for n := 0; n <= 40; n++ {
		lengths = append(lengths, n)
	}
	for _, edge := range []int{PlainBlockSize, CipherBlockSize, 2 * CipherBlockSize} {
		for d := -9; d <= 9; d++ {
			lengths = append(lengths, edge+d)
		}
	}
	for _, n := range lengths {
		b := make([]byte, n)
		if !isZero(b) {
			t.Fatalf("isZero(%d zero bytes) = false", n)
		}
		for i := range n {
			if i > 40 && i < n-40 && i%61 != 0 { // every edge byte, a stride inside
				continue
			}
			b[i] = 0x10
			if isZero(b) || isZero(b) != isZeroWordLoop(b) {
				t.Fatalf("isZero with byte %d of %d set = true", i, n)
			}
			b[i] = 0
		}
	}
}
