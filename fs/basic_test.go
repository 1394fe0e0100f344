package fs

import (
	"bytes"
	"os"
	"testing"

	"github.com/cryptds/cryptds/objcrypt"
)

func TestEncryptedReadWrite(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	tf.encDir("vm1")
	for _, n := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 17, 1 << 20, 3<<20 + 5} {
		data := randBytes(n)
		mustWrite(t, tf.m("vm1/f"), data)
		if got := mustRead(t, tf.m("vm1/f")); !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back differs", n)
		}
		st, err := os.Stat(tf.m("vm1/f"))
		if err != nil || st.Size() != int64(n) {
			t.Fatalf("size %d: stat %v %v", n, st.Size(), err)
		}
		bst, _ := os.Stat(tf.b("vm1/f"))
		if uint64(bst.Size()) != objcrypt.CipherSizeFromPlain(uint64(n)) {
			t.Fatalf("size %d: backing size %d", n, bst.Size())
		}
		if !isEncryptedBacking(t, tf.b("vm1/f")) {
			t.Fatal("no header xattr on backing file")
		}
	}
	// plain dir: passthrough
	mustWrite(t, tf.m("plain.txt"), []byte("hello"))
	if got, _ := os.ReadFile(tf.b("plain.txt")); string(got) != "hello" {
		t.Fatalf("plain backing = %q", got)
	}
}
