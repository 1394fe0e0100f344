package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/kmipclient"
)

// keyStateTimeout bounds the KMS query for one key in key list.
const keyStateTimeout = 10 * time.Second

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "list the KEKs a datastore and its backups reference, and destroy old ones",
		Description: "Old KEKs outlive a rekey: every ciphertext backup taken before it still needs them.\n" +
			"These commands manage them without the KMS's own tools. DATASTORE is the backing\n" +
			"directory (or the mountpoint of its cryptds mount); they read headers and policies\n" +
			"only, so the datastore may stay mounted. KMS flags as for mount and fsck (with --dev,\n" +
			"only while the datastore is not mounted: the dev KMS keeps its state in one process).",
		ArgsUsage: "list|destroy [--help] ARGS",
		Subcommands: []*cli.Command{
			keyListCommand(),
			keyDestroyCommand(),
		},
	}
}

func keyListCommand() *cli.Command {
	flags := append(kmsFlags(),
		&cli.StringSliceFlag{Name: "backup", Usage: "ciphertext backup `PATH` (directory or tar file) whose keys to list too; repeatable"},
		&cli.BoolFlag{Name: "json", Usage: "print a JSON array"},
	)
	return &cli.Command{
		Name:      "list",
		Usage:     "the KEKs the datastore's policies and objects (and --backup) reference, with their state at the KMS",
		ArgsUsage: "DATASTORE",
		Description: "STATE is what the KMS says now (GetAttributes State): Active, Deactivated (revoked),\n" +
			"Destroyed, not-found, unreachable. USE: in use (the datastore needs it), backups only\n" +
			"(only the backups given need it: keep it as long as they may be restored), or unused.\n" +
			"Exit 4 when the KMS could not be asked about some key.\n\n" +
			"Examples:\n   cryptds key list --kmip kms1:5696 ... /srv/ds\n" +
			"   cryptds key list --config /etc/cryptds/ds1.toml --backup /backup/web01-cipher.tar /srv/ds",
		Flags:        flags,
		Before:       loadConfigBefore(flags),
		OnUsageError: usageError,
		Action:       keyListAction,
	}
}

func keyDestroyCommand() *cli.Command {
	flags := append(kmsFlags(),
		&cli.StringSliceFlag{Name: "backup", Usage: "ciphertext backup `PATH` that must not need the key either; repeatable"},
		&cli.BoolFlag{Name: "force", Usage: "destroy even though objects or policies (or a --backup) still reference the key: they become unreadable for good"},
	)
	return &cli.Command{
		Name:      "destroy",
		Usage:     "revoke and destroy a KEK at the KMS, unless the datastore (or a --backup) still references it",
		ArgsUsage: "DATASTORE KEKID",
		Description: "Refuses (exit 3) while a policy or object of DATASTORE, or of a backup given with --backup,\n" +
			"references KEKID, naming one; --force destroys it all the same (that data is then\n" +
			"unreadable for good). There is no undo. Destroying a key that is already gone succeeds.\n\n" +
			"Example:\n   cryptds key destroy --config /etc/cryptds/ds1.toml --backup /backup/web01-cipher.tar /srv/ds 42",
		Flags:        flags,
		Before:       loadConfigBefore(flags),
		OnUsageError: usageError,
		Action:       keyDestroyAction,
	}
}

// scanRefs indexes the KEKs DATASTORE (the backing directory, or its
// cryptds mountpoint) and the backups reference.
func scanRefs(ds string, backups []string) (refIndex, error) {
	abs, err := filepath.Abs(ds)
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	if b, ok := backingOf(abs); ok {
		abs = b
	}
	ix := refIndex{}
	if err := ix.scanTree(abs, false); err != nil {
		return nil, withCode(ExitNotFound, fmt.Errorf("datastore %s: %w", abs, err))
	}
	for _, b := range backups {
		if err := ix.scanBackup(b); err != nil {
			return nil, withCode(ExitNotFound, fmt.Errorf("backup %s: %w", b, err))
		}
	}
	return ix, nil
}

// backingOf returns the backing directory of the cryptds mount at p (the
// mount hides the headers, so they are read from the backing store).
func backingOf(p string) (string, bool) {
	mounts, err := readMounts()
	if err != nil {
		return "", false
	}
	for _, m := range mounts {
		if m.Point == p && strings.HasPrefix(m.Source, fsName("")) {
			return strings.TrimPrefix(m.Source, fsName("")), true
		}
	}
	return "", false
}

// keyRow is one line of key list.
type keyRow struct {
	*kekRefs
	State    string `json:"state"`              // KMS state, not-found or unreachable
	Endpoint string `json:"endpoint,omitempty"` // the KMS endpoint that answered (or those tried)
	Use      string `json:"use"`                // in use, backups only, unused
}

func keyListAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return withCode(ExitUsage, fmt.Errorf("key list needs exactly one DATASTORE, got %d arguments", c.NArg()))
	}
	ix, err := scanRefs(c.Args().First(), c.StringSlice("backup"))
	if err != nil {
		return err
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.Bool("debug"))
	if err != nil {
		return err
	}
	ks, err := openKMS(c, log, nil, true)
	if err != nil {
		return err
	}
	defer ks.close()
	rows, unreachable := keyRows(c.Context, ks.client, ix)
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, rows); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEK\tSTATE\tKMS\tPOLICIES\tOBJECTS\tBACKUP\tUSE")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.ID, r.State, dash(r.Endpoint), r.Policies, r.Objects, r.Backup, r.Use)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if unreachable > 0 {
		return withCode(ExitKMS, fmt.Errorf("the KMS (%s) could not be asked about %d of %d keys", ks.kmsID, unreachable, len(rows)))
	}
	return nil
}

// keyRows asks the KMS for the state of every indexed KEK.
func keyRows(ctx context.Context, cl *kmipclient.Client, ix refIndex) ([]keyRow, int) {
	var rows []keyRow
	unreachable := 0
	for _, r := range ix.sorted() {
		row := keyRow{kekRefs: r, Use: "unused"}
		switch {
		case r.inUse():
			row.Use = "in use"
		case r.Backup > 0:
			row.Use = "backups only"
		}
		qctx, cancel := context.WithTimeout(ctx, keyStateTimeout)
		st, ep, err := cl.StateAt(qctx, r.ID)
		cancel()
		row.State, row.Endpoint = kmsStateName(st, err), ep
		var ke *kmipclient.Error
		if ep == "" && errors.As(err, &ke) {
			row.Endpoint = ke.Endpoint
		}
		if errors.Is(err, kmipclient.ErrUnreachable) {
			unreachable++
		}
		rows = append(rows, row)
	}
	return rows, unreachable
}

// kmsStateName names a KEK's state at the KMS for key list.
func kmsStateName(st kmipclient.State, err error) string {
	switch {
	case err == nil:
		return st.String()
	case errors.Is(err, kmipclient.ErrNotFound):
		return "not-found"
	case errors.Is(err, kmipclient.ErrPermission):
		return "refused"
	case errors.Is(err, kmipclient.ErrUnreachable):
		return "unreachable"
	}
	return "error"
}

func keyDestroyAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return withCode(ExitUsage, fmt.Errorf("key destroy needs DATASTORE and KEKID, got %d arguments", c.NArg()))
	}
	id := c.Args().Get(1)
	ix, err := scanRefs(c.Args().First(), c.StringSlice("backup"))
	if err != nil {
		return err
	}
	if r := ix[id]; r != nil && (r.inUse() || r.Backup > 0) && !c.Bool("force") {
		return withCode(ExitMount, fmt.Errorf("KEK %s is still referenced by %d policies and %d objects of the datastore and %d entries of the backups given (e.g. %s): destroying it makes them unreadable for good; rekey or remove them first, or give --force",
			id, r.Policies, r.Objects, r.Backup, r.Example))
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.Bool("debug"))
	if err != nil {
		return err
	}
	ks, err := openKMS(c, log, nil, true)
	if err != nil {
		return err
	}
	defer ks.close()
	if err := destroyKEK(c.Context, ks.client, id); err != nil {
		if errors.Is(err, kmipclient.ErrUnreachable) {
			return withCode(ExitKMS, fmt.Errorf("destroy KEK %s: the KMS (%s) could not be reached; nothing was destroyed: %w", id, ks.kmsID, err))
		}
		return withCode(ExitFailure, fmt.Errorf("destroy KEK %s: %w", id, err))
	}
	fmt.Fprintf(c.App.Writer, "destroyed kek: %s\n", id)
	return nil
}

// destroyKEK revokes (if still active) and destroys id; a key already
// revoked or destroyed is not an error.
func destroyKEK(ctx context.Context, cl *kmipclient.Client, id string) error {
	if err := cl.Revoke(ctx, id); err != nil && !errors.Is(err, kmipclient.ErrNotUsable) && !errors.Is(err, kmipclient.ErrNotFound) {
		return fmt.Errorf("revoke: %w", err)
	}
	if err := cl.Destroy(ctx, id); err != nil && !errors.Is(err, kmipclient.ErrNotFound) {
		return fmt.Errorf("destroy: %w", err)
	}
	return nil
}
