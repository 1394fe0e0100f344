package procfd

import (
	"os"
	"path/filepath"
	"testing"
)

// TestUnderOwnDescriptors opens files in a temp dir and finds them among
// this process's descriptors, with the right write flag; a sibling
// directory sharing the name prefix must not match.
func TestUnderOwnDescriptors(t *testing.T) {
	dir := t.TempDir()
	vm, other := filepath.Join(dir, "vm"), filepath.Join(dir, "vm2")
	for _, d := range []string{vm, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ro, rw, elsewhere := filepath.Join(vm, "ro"), filepath.Join(vm, "rw"), filepath.Join(other, "x")
	for _, p := range []string{ro, rw, elsewhere} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []struct {
		path string
		flag int
	}{{ro, os.O_RDONLY}, {rw, os.O_RDWR}, {elsewhere, os.O_RDWR}} {
		f, err := os.OpenFile(o.path, o.flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	got := map[string]File{}
	for _, f := range Under(vm + "/") {
		if f.PID == os.Getpid() {
			got[f.Path] = f
		}
	}
	want := map[string]bool{ro: false, rw: true}
	if len(got) != len(want) {
		t.Fatalf("got %v, want exactly %v", got, want)
	}
	for p, w := range want {
		f, ok := got[p]
		if !ok || f.Writable != w || f.Command == "" {
			t.Errorf("%s: got %+v (found %v), want writable=%v with a command", p, f, ok, w)
		}
	}
}

// TestFuseServer: a process holding /dev/fuse is marked as a FUSE server
// (callers skip it when they name a VM's writers); one that does not is not.
func TestFuseServer(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := os.OpenFile(f, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mine := func() File {
		t.Helper()
		for _, e := range Under(f) {
			if e.PID == os.Getpid() {
				return e
			}
		}
		t.Fatalf("own descriptor on %s not found", f)
		return File{}
	}
	if mine().FuseServer {
		t.Fatal("marked as a FUSE server without /dev/fuse open")
	}
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("cannot open /dev/fuse: %v", err)
	}
	defer dev.Close()
	if !mine().FuseServer {
		t.Error("holding /dev/fuse open, not marked as a FUSE server")
	}
}
