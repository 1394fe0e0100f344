package fs

import (
	"context"
	"fmt"
	"time"

	"github.com/cryptds/cryptds/vmreg"
)

// xattrKeyState is the read-only virtual xattr of a directory that says
// whether its policy's KEK can be used now, asked of the KMS at read time:
//
//	none kms=<endpoints>                   no policy
//	<state> kek=<id> kms=<endpoint(s)>     state: active, shredded, unreachable, refused, unknown
//
// kms is the endpoint that answered (the one serving the key now, not the
// address the policy recorded at creation), or every endpoint tried when
// none did; for "none", the mount's configured endpoints. `vm list` and
// `vm status` show it, and name the endpoints when the mount says ENOKEY.
// Like the other virtual attributes it is not listed.
const xattrKeyState = "user.cryptds.keystate"

// Key states of xattrKeyState.
const (
	KeyActive      = "active"      // the KMS serves the key
	KeyShredded    = "shredded"    // revoked, destroyed or unknown at the KMS (or shredded by this mount)
	KeyUnreachable = "unreachable" // no KMS endpoint answered
	KeyRefused     = "refused"     // the KMS denies this host the key
	KeyUnknown     = "unknown"     // the key source cannot say (no KeyStater)
)

// KeyStater is the optional part of Keys that xattrKeyState needs (the
// CLI's key source implements it over the KMIP client). It asks the KMS,
// not the cache: the point is what the KMS says now.
type KeyStater interface {
	// KeyState returns one of the Key* states for KEK id and the KMS
	// endpoint that answered (or the endpoints tried, comma-separated).
	KeyState(ctx context.Context, id string) (state, endpoint string)
}

// keyStateWait bounds a keystate read: `vm list` reads one per VM and must
// not hang on a KMS that does not answer.
const keyStateWait = 5 * time.Second

// keyStateText computes the value of xattrKeyState for directory d.
func (r *Root) keyStateText(ctx context.Context, d *node, dfd int) (string, error) {
	dv, err := r.dirVM(d, dfd)
	if err != nil {
		return "", err
	}
	if !dv.has || dv.vm.State == vmreg.Decrypted {
		return "none kms=" + r.cfg.KMSName, nil
	}
	pol, err := dv.vm.ParsedPolicy()
	if err != nil {
		return "", err
	}
	state, endpoint := KeyUnknown, r.cfg.KMSName
	switch ks, ok := r.cfg.Keys.(KeyStater); {
	case dv.vm.State == vmreg.Shredded, r.isShredded(pol.KEKID, pol.VMID):
		state = KeyShredded
	case ok:
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyStateWait)
		defer cancel()
		state, endpoint = ks.KeyState(ctx, pol.KEKID)
	}
	return fmt.Sprintf("%s kek=%s kms=%s", state, pol.KEKID, endpoint), nil
}
