package main

import (
	"runtime"
	"testing"
)

// TestSchedulerHeadroom checks that the daemon adds its spare Ps only when
// the administrator did not set GOMAXPROCS, and that the crypto pool is
// sized by the CPUs either way.
func TestSchedulerHeadroom(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	cases := []struct {
		name, env string
		want      int
	}{
		{"default", "", orig + readerHeadroom},
		{"set by the administrator", "3", orig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(orig)
			t.Setenv("GOMAXPROCS", c.env)
			if cpus := addSchedulerHeadroom(); cpus != orig {
				t.Errorf("crypto workers %d, want %d (the CPUs)", cpus, orig)
			}
			if got := runtime.GOMAXPROCS(0); got != c.want {
				t.Errorf("GOMAXPROCS %d, want %d", got, c.want)
			}
		})
	}
}
