package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pkg/xattr"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/cryptds/cryptds/objcrypt"
)

// TestMain lets scripts run the real command as a process too: "exec
// cryptds-proc ARGS" runs main, so what the process writes outside the
// command's own writers (Go's log package, slog's default logger that
// libraries use) is seen as a user sees it.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"cryptds-proc": main})
}

// TestScripts runs testdata/script/*.txtar: the command line's output and
// exit codes are an API, pinned by these scripts. "cryptds" runs the
// command line in-process; "exitcode N" checks the last cryptds exit code;
// mkvm, mkobj, rmxattr, setxattr and flipbyte craft backing datastores
// without a mount.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			case "xattr":
				f := filepath.Join(os.TempDir(), "cryptds-xattr-probe-"+strconv.Itoa(os.Getpid()))
				if err := os.WriteFile(f, nil, 0o600); err != nil {
					return false, err
				}
				defer os.Remove(f)
				return xattr.Set(f, "user.probe", []byte("1")) == nil, nil
			}
			return false, nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"cryptds":  cmdCryptds,
			"exitcode": cmdExitcode,
			"mkvm":     cmdMkvm,
			"mkobj":    cmdMkobj,
			"rmxattr": func(ts *testscript.TestScript, neg bool, args []string) {
				ts.Check(xattr.Remove(ts.MkAbs(args[0]), args[1]))
			},
			"setxattr": func(ts *testscript.TestScript, neg bool, args []string) {
				ts.Check(xattr.Set(ts.MkAbs(args[0]), args[1], []byte(args[2])))
			},
			"flipbyte": func(ts *testscript.TestScript, neg bool, args []string) {
				off, err := strconv.ParseInt(args[1], 10, 64)
				ts.Check(err)
				f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_RDWR, 0)
				ts.Check(err)
				defer f.Close()
				b := make([]byte, 1)
				_, err = f.ReadAt(b, off)
				ts.Check(err)
				b[0] ^= 0xff
				_, err = f.WriteAt(b, off)
				ts.Check(err)
			},
		},
	})
}

// cliMu serialises in-process runs: urfave/cli applies its shared help
// flag to every flag set, which races when scripts run in parallel.
var cliMu sync.Mutex

// cmdCryptds runs the command line in-process and records its exit code
// in $EXIT.
func cmdCryptds(ts *testscript.TestScript, neg bool, args []string) {
	cliMu.Lock()
	defer cliMu.Unlock()
	code := run(context.Background(), append([]string{"cryptds"}, args...), ts.Stdout(), ts.Stderr())
	ts.Setenv("EXIT", strconv.Itoa(code))
	if (code != 0) != neg {
		ts.Fatalf("cryptds %v: exit %d (negated: %v)", args, code, neg)
	}
}

func cmdExitcode(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: exitcode N")
	}
	if got := ts.Getenv("EXIT"); got != args[0] {
		ts.Fatalf("last cryptds exit code %s, want %s", got, args[0])
	}
}

// cmdMkvm makes DIR an encrypted VM directory: a policy under a random KEK
// that no KMS knows ("kek-script"); the DEK is kept in $VMDEK for mkobj.
func cmdMkvm(ts *testscript.TestScript, neg bool, args []string) {
	dir := ts.MkAbs(args[0])
	ts.Check(os.MkdirAll(dir, 0o755))
	kek := make([]byte, objcrypt.KeySize)
	_, err := rand.Read(kek)
	ts.Check(err)
	dek, err := objcrypt.NewDEK(nil)
	ts.Check(err)
	vm, err := objcrypt.NewVMID(nil)
	ts.Check(err)
	w, err := objcrypt.WrapDEK(kek, dek, "kek-script", vm, nil)
	ts.Check(err)
	pol := &objcrypt.Policy{Version: objcrypt.PolicyVersion1, VMID: vm, KEKID: "kek-script", WrappedDEK: w, Created: time.Now().UTC()}
	raw, err := pol.MarshalBinary()
	ts.Check(err)
	ts.Check(xattr.Set(dir, "user.cryptds.policy", raw))
	ts.Setenv("VMDEK", hex.EncodeToString(dek))
}

// cmdMkobj writes an encrypted object FILE of SIZE random plaintext bytes
// under the policy of its directory (made by mkvm).
func cmdMkobj(ts *testscript.TestScript, neg bool, args []string) {
	path := ts.MkAbs(args[0])
	size, err := strconv.Atoi(args[1])
	ts.Check(err)
	raw, err := xattr.Get(filepath.Dir(path), "user.cryptds.policy")
	ts.Check(err)
	pol, err := objcrypt.ParsePolicy(raw)
	ts.Check(err)
	dek, err := hex.DecodeString(ts.Getenv("VMDEK"))
	ts.Check(err)
	id, err := objcrypt.NewObjectID(nil)
	ts.Check(err)
	h := pol.NewHeader(id)
	xb, err := h.MarshalBinary()
	ts.Check(err)
	region, err := h.MarshalRegion()
	ts.Check(err)
	obj, err := objcrypt.NewObject(dek, id, nil)
	ts.Check(err)
	plain := make([]byte, size)
	_, err = rand.Read(plain)
	ts.Check(err)
	body, err := obj.EncryptBlocks(nil, plain, 0, nil)
	ts.Check(err)
	ts.Check(os.WriteFile(path, append(region, body...), 0o644))
	ts.Check(xattr.Set(path, headerAttr, xb))
}
