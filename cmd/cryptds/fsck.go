package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"github.com/pkg/xattr"
	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/fsck"
	"github.com/cryptds/cryptds/journal"
	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmctl"
	"github.com/cryptds/cryptds/vmreg"
)

func fsckCommand() *cli.Command {
	flags := append(kmsFlags(),
		&cli.BoolFlag{Name: "restore-xattrs", Usage: "re-create header xattrs lost by an xattr-dropping copy (cp, rsync without -X) from the in-file header copy"},
		&cli.BoolFlag{Name: "no-keys", Usage: "check structure only (headers, sizes, policies, leftovers); no KMS, blocks not authenticated"},
		&cli.BoolFlag{Name: "json", Usage: "print the report as one JSON object"},
	)
	return &cli.Command{
		Name:      "fsck",
		Usage:     "check an unmounted backing datastore: headers, sizes, every block, policies, leftovers",
		ArgsUsage: "DATASTORE",
		Description: "Offline: refuses (exit 3) while DATASTORE is mounted. For every backing object it checks\n" +
			"that the header xattr and the in-file header copy agree, that the size is a valid\n" +
			"ciphertext size, and (with keys from the KMS, same flags as mount) that every stored\n" +
			"block authenticates; it reports directory policies that do not parse and leftovers of\n" +
			"interrupted conversions. Nothing is changed unless --restore-xattrs is given, which puts\n" +
			"back header xattrs from the in-file copy for files that start with a valid header and\n" +
			"have no xattr (never over a disagreeing one).\n\n" +
			"Exit 0: clean (warnings such as leftovers or a shredded VM's unreadable objects may be\n" +
			"listed); 5: corruption found; 4: some objects could not be verified because the KMS\n" +
			"did not answer; 3: the datastore is mounted; 1: the check could not run.\n\n" +
			"Examples:\n   cryptds fsck --dev --state-dir /tmp/kms /srv/ds\n" +
			"   cryptds fsck --no-keys --json /srv/ds\n   cryptds fsck --kmip kms1:5696 ... --restore-xattrs /srv/restored-ds",
		Flags:        flags,
		Before:       loadConfigBefore(flags),
		OnUsageError: usageError,
		Action:       fsckAction,
	}
}

func fsckAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return withCode(ExitUsage, fmt.Errorf("fsck needs exactly one DATASTORE, got %s", plural(c.NArg(), "argument", "arguments")))
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.Bool("debug"))
	if err != nil {
		return err
	}
	ds, err := filepath.Abs(c.Args().First())
	if err != nil {
		return withCode(ExitUsage, err)
	}
	if err := refuseOnMount("fsck", ds, "unmount it, then run cryptds fsck on %s"); err != nil {
		return err
	}
	if err := refuseMounted(ds); err != nil {
		return err
	}
	opts := fsck.Options{RestoreXattrs: c.Bool("restore-xattrs"), TempPrefix: vmctl.TempPrefix}
	if raw, err := xattr.Get(ds, datastoreIDAttr); err == nil && len(raw) > 0 {
		id, err := parseDatastoreID(ds, raw)
		if err != nil {
			return err
		}
		if reg, err := vmreg.Open(vmRecordPath(c.String("state-dir"), id)); err != nil {
			log.Warn("cannot read the mount's VM record; placement checks use the backing policies only", "err", err)
		} else {
			opts.VMs = reg.All()
		}
		recs, err := journal.Pending(journalPath(c.String("state-dir"), id))
		if err != nil {
			log.Warn("cannot read the write journal", "err", err)
		}
		opts.PendingWrites = len(recs)
	}
	kmsName := ""
	if !c.Bool("no-keys") {
		ks, err := openKMS(c, log, nil, false)
		if err != nil {
			return err
		}
		defer ks.close()
		kmsName = ks.kmsID
		ring, err := keyring.Open(ks.client, keyring.Options{Cache: keyring.CacheOff, Logger: log})
		if err != nil {
			return withCode(ExitFailure, fmt.Errorf("open key ring: %w", err))
		}
		ks.ring = ring
		opts.Keys = fsckKeys{ring}
	}
	rep, err := fsck.Check(c.Context, ds, opts)
	if err != nil {
		return withCode(ExitFailure, fmt.Errorf("fsck %s: %w", ds, err))
	}
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else {
		printFsck(c.App.Writer, rep)
	}
	switch {
	case rep.Corrupt():
		return withCode(ExitCorrupt, fmt.Errorf("%s: corruption found", ds))
	case rep.Incomplete():
		return withCode(ExitKMS, fmt.Errorf("%s: some objects were not verified: the KMS (%s) did not answer", ds, kmsName))
	}
	return nil
}

// refuseMounted refuses a datastore that a cryptds mount is serving: the
// daemon may be rewriting blocks and headers under the check.
func refuseMounted(ds string) error {
	mounts, err := readMounts()
	if err != nil {
		return withCode(ExitFailure, err)
	}
	real, err := filepath.EvalSymlinks(ds)
	if err != nil {
		return withCode(ExitNotFound, fmt.Errorf("datastore: %w", err))
	}
	for _, m := range mounts {
		if m.Source == fsName(ds) || m.Source == fsName(real) {
			return withCode(ExitMount, fmt.Errorf("datastore %s is mounted at %s: unmount it first (fsck is offline)", ds, m.Point))
		}
	}
	return nil
}

// fsckKeys gives fsck the ring's keys with its errors classified by fsck's
// sentinels (fsck does not know the keyring).
type fsckKeys struct{ r *keyring.Ring }

func (k fsckKeys) KEK(ctx context.Context, id string) (objcrypt.Key, error) {
	key, err := k.r.KEK(ctx, id)
	switch {
	case err == nil:
		return key, nil
	case errors.Is(err, keyring.ErrKeyUnusable):
		return nil, fmt.Errorf("%w: %w", fsck.ErrKeyGone, err)
	default:
		return nil, fmt.Errorf("%w: %w", fsck.ErrKeyUnavailable, err)
	}
}

func printFsck(w io.Writer, r *fsck.Report) {
	if len(r.Findings) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEVERITY\tKIND\tPATH\tDETAIL")
		for _, f := range r.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Severity, f.Kind, f.Path, f.Detail)
		}
		tw.Flush()
	}
	// Each unusable KEK's error once, not on every line of its objects.
	ids := slices.Sorted(maps.Keys(r.KeyErrors))
	for _, id := range ids {
		fmt.Fprintf(w, "KEK %s: %s\n", id, r.KeyErrors[id])
	}
	verified := "blocks not authenticated (--no-keys)"
	if r.KeysChecked {
		verified = fmt.Sprintf("%d verified (%s)", r.Verified, plural(r.BlocksVerified, "block", "blocks"))
	}
	state := "clean"
	switch {
	case r.Corrupt():
		state = "CORRUPT"
	case r.Incomplete():
		state = "INCOMPLETE"
	}
	fmt.Fprintf(w, "%s: %s: %s (%d encrypted, %d plain), %s, %s, %s and %s restored, %s\n",
		r.Datastore, state, plural(r.Objects, "object", "objects"), r.Encrypted, r.Plain, verified,
		plural(r.Policies, "policy", "policies"), plural(r.Restored, "xattr", "xattrs"),
		plural(r.PoliciesRestored, "policy", "policies"), plural(len(r.Findings), "finding", "findings"))
}
