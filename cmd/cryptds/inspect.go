package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pkg/xattr"
	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/objcrypt"
)

// headerAttr is the backing-file xattr that makes an object encrypted.
const headerAttr = "user.cryptds.hdr"

// objectInfo is what inspect prints; it holds no key material (the wrapped
// DEK is ciphertext, and is shown only as its length).
type objectInfo struct {
	Path          string `json:"path"`
	Version       uint16 `json:"version"`
	Suite         uint16 `json:"suite"`
	ObjectID      string `json:"object_id"`
	VMID          string `json:"vm_id"`
	KEKID         string `json:"kek_id"`
	WrappedDEKLen int    `json:"wrapped_dek_bytes"`
	BackingSize   int64  `json:"backing_size"`
	PlainSize     uint64 `json:"plain_size"`
	XattrPresent  bool   `json:"xattr_present"`
	RegionAgrees  bool   `json:"region_agrees"`
	Problem       string `json:"problem,omitempty"`
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show the cryptds header of a backing object (no keys needed, none shown)",
		ArgsUsage: "BACKINGFILE...",
		Description: "Reads the header xattr and the in-file header copy of files in the backing\n" +
			"datastore (not the mount). Exit 0 when every file is a healthy encrypted object,\n" +
			"5 when a header is corrupt or the two copies disagree, 6 when a file is not encrypted,\n" +
			"3 when a path is on a cryptds mount (the message names its backing file), 1 when a\n" +
			"file cannot be read (missing, no permission).\n\n" +
			"Example:\n   cryptds inspect /srv/ds/vm1/disk.qcow2\n   cryptds inspect --json /srv/ds/vm1/*",
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "one JSON object per file"}},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return withCode(ExitUsage, errors.New("inspect needs at least one BACKINGFILE"))
			}
			worst, bad, first := ExitOK, 0, ""
			for _, p := range c.Args().Slice() {
				info, code := inspectObject(p)
				if code != ExitOK {
					bad++
					if first == "" {
						first = p + ": " + info.Problem
					}
				}
				worst = max(worst, code)
				if c.Bool("json") {
					b, _ := json.Marshal(info)
					fmt.Fprintln(c.App.Writer, string(b))
					continue
				}
				printObjectInfo(c.App.Writer, info)
			}
			switch {
			case bad == 1 && c.NArg() == 1:
				return withCode(worst, errors.New(first))
			case bad > 0:
				return withCode(worst, fmt.Errorf("%d of %d files are not healthy encrypted objects (first: %s)", bad, c.NArg(), first))
			}
			return nil
		},
	}
}

func printObjectInfo(w io.Writer, i objectInfo) {
	fmt.Fprintf(w, "%s:\n", i.Path)
	if i.Problem != "" {
		fmt.Fprintf(w, "  problem:      %s\n", i.Problem)
	}
	if !i.XattrPresent && i.Version == 0 {
		return
	}
	fmt.Fprintf(w, "  format:       v%d suite %d\n  object id:    %s\n  vm id:        %s\n  kek id:       %s\n  wrapped dek:  %d bytes\n  size:         %d plaintext bytes (%d on the backing store)\n  header copies agree: %v\n",
		i.Version, i.Suite, i.ObjectID, i.VMID, i.KEKID, i.WrappedDEKLen, i.PlainSize, i.BackingSize, i.RegionAgrees)
}

// inspectObject reads both header copies of one backing file.
func inspectObject(path string) (objectInfo, int) {
	info := objectInfo{Path: path}
	fail := func(code int, format string, a ...any) (objectInfo, int) {
		info.Problem = fmt.Sprintf(format, a...)
		return info, code
	}
	if mnt, backing, ok := onCryptdsMount(path); ok {
		return fail(ExitMount, "the file is on the cryptds mount %s, which shows plaintext; inspect reads backing files: cryptds inspect %s", mnt, backing)
	}
	f, err := os.Open(path)
	if err != nil {
		// A missing or unreadable file is an ordinary failure (exit 1),
		// not "not an encrypted object".
		return fail(ExitFailure, "%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fail(ExitFailure, "%v", err)
	}
	info.BackingSize = st.Size()
	raw, err := xattr.FGet(f, headerAttr)
	var xh *objcrypt.Header
	switch {
	case errors.Is(err, xattr.ENOATTR):
	case err != nil:
		return fail(ExitFailure, "read %s: %v", headerAttr, err)
	default:
		info.XattrPresent = true
		if xh, err = objcrypt.ParseHeader(raw); err != nil {
			return fail(ExitCorrupt, "header xattr: %v", err)
		}
	}
	region := make([]byte, objcrypt.HeaderRegionSize)
	n, _ := f.ReadAt(region, 0)
	rh, rerr := objcrypt.ParseRegion(region[:n])
	h := xh
	if h == nil {
		if rerr != nil {
			return fail(ExitNotFound, "not an encrypted object (no %s xattr, no in-file header)", headerAttr)
		}
		h = rh
	}
	info.Version, info.Suite, info.KEKID, info.WrappedDEKLen = h.Version, h.Suite, h.KEKID, len(h.WrappedDEK)
	info.ObjectID, info.VMID = h.ObjectID.String(), h.VMID.String()
	if ps, err := objcrypt.PlainSizeFromCipher(uint64(max(st.Size(), 0))); err == nil {
		info.PlainSize = ps
	} else if st.Size() > 0 {
		return fail(ExitCorrupt, "size: %v", err)
	}
	switch {
	case xh == nil:
		return fail(ExitCorrupt, "in-file header present but the %s xattr is missing (restore it with cryptds fsck --restore-xattrs)", headerAttr)
	case rerr != nil && st.Size() == 0:
		info.RegionAgrees = true // empty object: region written on first write
	case rerr != nil:
		return fail(ExitCorrupt, "in-file header: %v", rerr)
	case !xh.Equal(rh):
		return fail(ExitCorrupt, "the header xattr and the in-file header disagree")
	default:
		info.RegionAgrees = true
	}
	return info, ExitOK
}
