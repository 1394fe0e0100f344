package fs

import (
	"context"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeServing is the endpoint fakeKeys says serves its keys: not the
// KMSName ("fake") the policy records, as after a KMS moved.
const fakeServing = "kms-b.example:5696"

// KeyState makes fakeKeys a KeyStater: active while it holds the key,
// shredded once destroyed, unreachable while failing.
func (k *fakeKeys) KeyState(ctx context.Context, id string) (string, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch _, ok := k.keys[id]; {
	case k.fail != nil:
		return KeyUnreachable, "kms-a.example:5696," + fakeServing
	case !ok:
		return KeyShredded, fakeServing
	}
	return KeyActive, fakeServing
}

// TestKeyStateXattr: user.cryptds.keystate says, per directory, whether
// the KMS serves the policy's key now and from which endpoint; it is
// read-only and not listed.
func TestKeyStateXattr(t *testing.T) {
	tf := newTestFS(t, testOpts{})
	vm := tf.encDir("vm")
	pol, err := getx(t, vm, xattrPolicy)
	if err != nil {
		t.Fatal(err)
	}
	kek := strings.TrimPrefix(strings.Fields(pol)[1], "kek=")
	want := func(path, v string) {
		t.Helper()
		if got, err := getx(t, path, xattrKeyState); err != nil || got != v {
			t.Errorf("keystate of %s = %q, %v; want %q", path, got, err, v)
		}
	}
	want(vm, "active kek="+kek+" kms="+fakeServing)
	want(tf.m("."), "none kms=fake")
	tf.keys.setFail(errors.New("down"))
	want(vm, "unreachable kek="+kek+" kms=kms-a.example:5696,"+fakeServing)
	tf.keys.setFail(nil)
	if err := unix.Setxattr(vm, xattrPolicy, []byte("shred"), 0); err != nil {
		t.Fatal(err)
	}
	want(vm, "shredded kek="+kek+" kms=fake")
	if err := unix.Setxattr(vm, xattrKeyState, []byte("active"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("setting keystate: %v, want EPERM", err)
	}
}
