package keyring_test

import (
	"context"
	"testing"

	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/objcrypt"
)

func benchRing(b *testing.B) (*keyring.Ring, string) {
	b.Helper()
	kms := newKMS()
	kms.add("cryptds/ds1/vm1")
	r, err := keyring.Open(kms, keyring.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	k, err := r.KEK(context.Background(), "cryptds/ds1/vm1")
	if err != nil {
		b.Fatal(err)
	}
	k.Zero()
	return r, "cryptds/ds1/vm1"
}

// BenchmarkHit is the hot-map hit: target < 1 µs and one allocation (the
// returned copy).
func BenchmarkHit(b *testing.B) {
	r, id := benchRing(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		k, err := r.KEK(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		k.Zero()
	}
}

// BenchmarkWithKEK is the lending hit: no allocation.
func BenchmarkWithKEK(b *testing.B) {
	r, id := benchRing(b)
	ctx := context.Background()
	var sink byte
	fn := func(k objcrypt.Key) error { sink ^= k[0]; return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := r.WithKEK(ctx, id, fn); err != nil {
			b.Fatal(err)
		}
	}
	_ = sink
}

// BenchmarkHitParallel measures the shared read lock under contention.
func BenchmarkHitParallel(b *testing.B) {
	r, id := benchRing(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer() // RunParallel has no b.Loop to exclude the setup
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k, err := r.KEK(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			k.Zero()
		}
	})
}
