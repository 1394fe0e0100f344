package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/cryptds/cryptds/vmctl"
)

// progressInterval is how often progress lines are printed when stderr is
// not a terminal (logs, CI, scripts).
const progressInterval = 5 * time.Second

func vmCommand() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "encrypt, decrypt, list and inspect VMs on a mounted datastore",
		Description: "A VM is a directory directly under the root of a cryptds mount. These commands\n" +
			"work through the mount (which must be running) and read the backing store to tell\n" +
			"encrypted objects from plain ones, so they run as root on the host of the mount.\n\n" +
			"Examples:\n   cryptds vm list /mnt/ds\n   cryptds vm encrypt /mnt/ds/vm1\n   cryptds vm status --json /mnt/ds/vm1",
		ArgsUsage: "encrypt|decrypt|list|status|rekey|shred [--help] ARGS",
		Subcommands: []*cli.Command{
			vmConvertCommand(true),
			vmConvertCommand(false),
			vmListCommand(),
			vmStatusCommand(),
			vmRekeyCommand(),
			vmShredCommand(),
		},
	}
}

func vmConvertCommand(encrypt bool) *cli.Command {
	name, verb, desc := "decrypt", "decrypting", "Removes the VM's encryption policy and converts every encrypted object back to a\n"+
		"plain one (the vSphere \"Datastore default\" policy). Exit 6 when the VM is not encrypted."
	convert, usage := vmctl.Decrypt, "decrypt a VM: remove its policy, then convert its encrypted objects back to plain"
	if encrypt {
		name, verb, desc = "encrypt", "encrypting", "Sets the VM's encryption policy (the mount creates its key in the KMS) and converts\n"+
			"every plain object to an encrypted one. Exit 6 when the VM is already encrypted."
		convert, usage = vmctl.Encrypt, "encrypt a VM: set its policy, then convert its existing plain objects"
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "VMDIR",
		Description: desc + "\n\n" +
			"Each object is copied through the mount next to itself (" + vmctl.TempPrefix + "NAME), fsync'd\n" +
			"and renamed over the original, so a crash or Ctrl-C leaves the old or the new object,\n" +
			"never a broken one; running the command again removes leftovers and finishes the job.\n" +
			"Holes are not copied: a sparse disk image stays sparse; what is allocated stays allocated\n" +
			"(a preallocated, thick image keeps its space reserved). Refuses (exit 3) while a process\n" +
			"has an object of the VM open for writing, i.e. while the VM runs; objects with hard links\n" +
			"are refused; free space for the largest object is checked before anything changes.\n\n" +
			"Example:\n   cryptds vm " + name + " /mnt/ds/vm1",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "convert even if objects are open for writing (only when those writers are not the VM: their later writes would be lost)"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, fmt.Errorf("vm %s needs exactly one VMDIR, got %s", name, plural(c.NArg(), "argument", "arguments")))
			}
			path := c.Args().First()
			pr := newProgressReporter(c.App.ErrWriter, verb+" "+filepath.Base(path))
			rep, err := convert(c.Context, path, vmctl.Options{Force: c.Bool("force"), Progress: pr.update})
			pr.finish(err == nil)
			if err != nil {
				if c.Context.Err() != nil {
					err = fmt.Errorf("interrupted (the objects converted so far are done, the rest untouched; run the command again to finish): %w", err)
				}
				return vmExit(err)
			}
			printReport(c.App.Writer, name+"ed", rep)
			return nil
		},
	}
}

// vmExit gives vmctl's errors their exit codes (README "Exit codes").
func vmExit(err error) error {
	switch {
	case errors.Is(err, vmctl.ErrNotVM), errors.Is(err, vmctl.ErrNotEncrypted), errors.Is(err, vmctl.ErrAlreadyEncrypted):
		return withCode(ExitNotFound, err)
	case errors.Is(err, vmctl.ErrNotMount), errors.Is(err, vmctl.ErrBusy):
		return withCode(ExitMount, err)
	case errors.Is(err, vmctl.ErrKMS), errors.Is(err, syscall.ENOKEY):
		// ENOKEY from an open or a copy through the mount: the mount
		// could not get a key from the KMS (README "Errors through the
		// mount"), the same failure as a refused policy change.
		return withCode(ExitKMS, err)
	}
	return withCode(ExitFailure, err)
}

func printReport(w io.Writer, done string, r vmctl.Report) {
	secs := r.Duration.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(r.Bytes) / 1e6 / secs
	}
	// The size is the objects' plaintext size, the same whichever way a VM
	// is converted (and vm list's SIZE); the data copied leaves out holes.
	fmt.Fprintf(w, "%s %s: %s of %s converted (%d already were), %s of data copied in %.1fs (%.1f MB/s)\n",
		done, r.VM, plural(r.Converted, "object", "objects"), humanBytes(r.Size), r.AlreadyDone, humanBytes(r.Bytes), secs, rate)
	if r.KEKID != "" {
		fmt.Fprintf(w, "  kek: %s\n", r.KEKID)
	}
	if n := len(r.RemovedLeftovers); n > 0 {
		fmt.Fprintf(w, "  removed %s of an interrupted run\n", plural(n, "leftover", "leftovers"))
	}
}

func vmListCommand() *cli.Command {
	return &cli.Command{
		Name:      "list",
		Usage:     "one line per VM of a mounted datastore: state, key and its state at the KMS, KMS, objects, size",
		ArgsUsage: "MOUNTPOINT",
		Description: "States: encrypted (policy set, every object encrypted), shredded (encrypted, but its\n" +
			"key is destroyed at the KMS: unreadable for good), plain, mixed (policy and objects\n" +
			"disagree: run vm encrypt or vm decrypt), converting (leftovers of an interrupted\n" +
			"conversion: run it again). KEY is what the KMS says of the VM's key now: active,\n" +
			"shredded, unreachable or refused; KMS is the endpoint serving it now (the endpoints\n" +
			"tried when none answered). SIZE is the plaintext size.\n\n" +
			"Examples:\n   cryptds vm list /mnt/ds\n   cryptds vm list --json /mnt/ds | jq -r '.[] | select(.state != \"encrypted\") | .name'",
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON array"}},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, fmt.Errorf("vm list needs exactly one MOUNTPOINT, got %s", plural(c.NArg(), "argument", "arguments")))
			}
			vms, err := vmctl.List(c.Args().First())
			if err != nil {
				return vmExit(err)
			}
			if c.Bool("json") {
				if vms == nil {
					vms = []vmctl.VMInfo{}
				}
				return writeJSON(c.App.Writer, vms)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tKEK\tKEY\tKMS\tOBJECTS\tSIZE")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.Name, v.State, dash(v.KEKID), dash(v.KeyState), dash(v.KMS), v.Objects, humanBytes(v.Size))
			}
			return tw.Flush()
		},
	}
}

func vmStatusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "one VM in detail: policy, key, and every object with its state",
		ArgsUsage: "VMDIR",
		Description: "Example:\n   cryptds vm status /mnt/ds/vm1\n   cryptds vm status --json /mnt/ds/vm1\n\n" +
			"Whether an object is encrypted is read from its backing file's header, which the\n" +
			"mount cannot fake.",
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON object"}},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, fmt.Errorf("vm status needs exactly one VMDIR, got %s", plural(c.NArg(), "argument", "arguments")))
			}
			st, err := vmctl.Status(c.Args().First())
			if err != nil {
				return vmExit(err)
			}
			if c.Bool("json") {
				if st.Files == nil {
					st.Files = []vmctl.ObjectStatus{}
				}
				return writeJSON(c.App.Writer, st)
			}
			w := c.App.Writer
			fmt.Fprintf(w, "vm:       %s\nstate:    %s\npolicy:   %s\n", st.Name, st.State, st.Policy)
			if st.KEKID != "" {
				fmt.Fprintf(w, "kek:      %s\nkey:      %s\nkms:      %s\nvm id:    %s\n", st.KEKID, dash(st.KeyState), dash(st.KMS), dash(st.VMID))
			}
			fmt.Fprintf(w, "objects:  %d (%d encrypted, %d plain), %s\nbacking:  %s\n\n", st.Objects, st.Encrypted, st.Plain, humanBytes(st.Size), st.Backing)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "OBJECT\tSTATE\tKEK\tSIZE\tALLOCATED\tNOTE")
			for _, f := range st.Files {
				state, note := "plain", f.Problem
				switch {
				case f.Leftover:
					state, note = "leftover", "temp file of an interrupted conversion"
					if f.Orphan {
						note = "temp file whose original is gone: check it by hand"
					}
				case f.Encrypted:
					state = "encrypted"
				}
				if f.Links > 1 {
					note = fmt.Sprintf("%d hard links (conversion refuses it)", f.Links)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Path, state, dash(f.KEKID), humanBytes(f.Size), humanBytes(f.Allocated), note)
			}
			return tw.Flush()
		},
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes formats n in binary units (go-humanize, already in the
// module graph through badger).
func humanBytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

// progressReporter shows a conversion's progress: a bar (bytes, rate, ETA)
// when w is a terminal, otherwise a plain line every progressInterval so logs
// stay readable.
type progressReporter struct {
	w     io.Writer
	what  string
	bar   *progressbar.ProgressBar
	tty   bool
	start time.Time
	last  time.Time
	p     vmctl.Progress
}

func newProgressReporter(w io.Writer, what string) *progressReporter {
	r := &progressReporter{w: w, what: what, start: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.tty = true
	}
	r.last = r.start
	return r
}

// update is the vmctl.Options.Progress hook.
func (r *progressReporter) update(p vmctl.Progress) {
	r.p = p
	if r.tty {
		if r.bar == nil {
			r.bar = progressbar.NewOptions64(p.TotalBytes,
				progressbar.OptionSetDescription(r.what),
				progressbar.OptionSetWriter(r.w),
				progressbar.OptionShowBytes(true),
				progressbar.OptionShowTotalBytes(true),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionFullWidth(),
				progressbar.OptionShowElapsedTimeOnFinish(),
				progressbar.OptionSetRenderBlankState(true),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(r.w) }),
			)
		}
		_ = r.bar.Set64(p.Bytes)
		return
	}
	if now := time.Now(); now.Sub(r.last) >= progressInterval {
		r.last = now
		r.line(now)
	}
}

func (r *progressReporter) line(now time.Time) {
	p := r.p
	secs := now.Sub(r.start).Seconds()
	rate := float64(p.Bytes) / secs
	pct, eta := 100.0, "-"
	if p.TotalBytes > 0 {
		pct = 100 * float64(p.Bytes) / float64(p.TotalBytes)
	}
	if rate > 0 && p.TotalBytes > p.Bytes {
		eta = time.Duration(float64(p.TotalBytes-p.Bytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(r.w, "%s: %s of %s (%.0f%%), %d/%d objects, %.1f MB/s, ETA %s\n",
		r.what, humanBytes(p.Bytes), humanBytes(p.TotalBytes), pct, p.Objects, p.TotalObjects, rate/1e6, eta)
}

// finish completes the bar (or prints a last line if lines were printed).
func (r *progressReporter) finish(ok bool) {
	switch {
	case r.bar != nil && ok:
		_ = r.bar.Finish()
	case r.bar != nil:
		_ = r.bar.Exit()
		fmt.Fprintln(r.w)
	case !r.tty && r.last != r.start:
		r.line(time.Now())
	}
}

func vmRekeyCommand() *cli.Command {
	return &cli.Command{
		Name:      "rekey",
		Usage:     "rotate a VM's keys: new KEK (shallow, in place, VM may run) or new KEK and DEK (--deep, re-encrypts, VM off)",
		ArgsUsage: "VMDIR",
		Description: "Shallow (default): the mount creates a new KEK in the KMS, re-wraps the VM's DEK under it and\n" +
			"rewrites the policy and both header copies of every object in place. No data is copied and the\n" +
			"VM may keep running. Every header is checked afterwards; the old KEK ids are printed: the VM no\n" +
			"longer uses them, but every ciphertext backup taken before the rekey still does. Keep them until\n" +
			"those backups expire; 'cryptds key list --backup PATH' shows which keys a backup needs and\n" +
			"'cryptds key destroy' destroys one no object or given backup references.\n\n" +
			"--deep: the policy gets a new KEK and a new DEK, then every object is re-encrypted by copy and\n" +
			"rename through the mount (like vm encrypt: crash-safe, holes and preallocation kept, progress shown). The VM must\n" +
			"be off (exit 3 while objects are open for writing, unless --force). Run it again after an\n" +
			"interruption: it finishes the interrupted rekey instead of starting another.\n\n" +
			"Exit 4 when the KMS is unreachable (nothing changed), 6 when the VM is not encrypted.\n\n" +
			"Examples:\n   cryptds vm rekey /mnt/ds/vm1\n   cryptds vm rekey --deep /mnt/ds/vm1",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "deep", Usage: "new DEK too: re-encrypt every object (VM must be off)"},
			&cli.BoolFlag{Name: "force", Usage: "with --deep: convert even if objects are open for writing (their later writes would be lost)"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, fmt.Errorf("vm rekey needs exactly one VMDIR, got %s", plural(c.NArg(), "argument", "arguments")))
			}
			if c.Bool("force") && !c.Bool("deep") {
				return withCode(ExitUsage, errors.New("--force only applies to --deep (a shallow rekey never refuses a running VM)"))
			}
			path := c.Args().First()
			var rep vmctl.RekeyReport
			var err error
			if c.Bool("deep") {
				pr := newProgressReporter(c.App.ErrWriter, "re-encrypting "+filepath.Base(path))
				rep, err = vmctl.RekeyDeep(c.Context, path, vmctl.Options{Force: c.Bool("force"), Progress: pr.update})
				pr.finish(err == nil)
			} else {
				rep, err = vmctl.Rekey(c.Context, path)
			}
			if err != nil {
				if c.Context.Err() != nil {
					err = fmt.Errorf("interrupted (run the command again to finish): %w", err)
				}
				return vmExit(err)
			}
			return printRekey(c, rep)
		},
	}
}

func vmShredCommand() *cli.Command {
	return &cli.Command{
		Name:      "shred",
		Usage:     "destroy a VM's keys in the KMS: its data becomes unreadable forever (needs --yes)",
		ArgsUsage: "VMDIR",
		Description: "Revokes and destroys, through the mount, every KEK the VM's policy and objects name, and\n" +
			"makes the mount forget them at once: open files of the VM fail from the next read or write\n" +
			"(EKEYREVOKED), every later open fails, also after a remount. There is no undo. The objects\n" +
			"and the policy stay on disk; remove the directory to reclaim the space. Run it again if it\n" +
			"failed part way (exit 4: some keys could not be destroyed at the KMS).\n\n" +
			"Example:\n   cryptds vm shred --yes /mnt/ds/vm1",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "yes", Usage: "confirm: the VM's data is to be made unrecoverable"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, fmt.Errorf("vm shred needs exactly one VMDIR, got %s", plural(c.NArg(), "argument", "arguments")))
			}
			if !c.Bool("yes") {
				return withCode(ExitUsage, fmt.Errorf("vm shred makes %s unreadable forever: add --yes to confirm", c.Args().First()))
			}
			rep, err := vmctl.Shred(c.Context, c.Args().First())
			if err != nil {
				return vmExit(err)
			}
			return printRekey(c, rep)
		},
	}
}

func printRekey(c *cli.Context, r vmctl.RekeyReport) error {
	if c.Bool("json") {
		return writeJSON(c.App.Writer, r)
	}
	w := c.App.Writer
	switch r.Mode {
	case "shred":
		fmt.Fprintf(w, "shredded %s: %s now unreadable\n", r.VM, plural(r.Objects, "encrypted object is", "encrypted objects are"))
		for _, k := range r.Destroyed {
			until := k.Until
			if until == "" {
				until = "the shred"
			}
			fmt.Fprintf(w, "  destroyed kek %s: kills every copy encrypted under it, including ciphertext backups taken from %s to %s\n", k.ID, k.Since, until)
		}
		return nil
	case "deep":
		verb := "deep rekey of"
		if r.Resumed {
			verb = "finished the interrupted deep rekey of"
		}
		fmt.Fprintf(w, "%s %s: %s re-encrypted, %s copied in %.1fs\n", verb, r.VM, plural(r.Converted, "object", "objects"), humanBytes(r.Bytes), r.Duration.Seconds())
	default:
		fmt.Fprintf(w, "rekeyed %s: %s rewritten in place in %.1fs\n", r.VM, plural(r.Objects, "object header", "object headers"), r.Duration.Seconds())
	}
	fmt.Fprintf(w, "  kek: %s\n", r.KEKID)
	old := 0
	for _, k := range r.OldKEKs {
		if k != r.KEKID {
			fmt.Fprintf(w, "  old kek (no longer used by this VM): %s\n", k)
			old++
		}
	}
	if old > 0 {
		fmt.Fprintf(w, "  every ciphertext backup of %s taken before this rekey still needs the old kek: keep it until those\n"+
			"  backups expire ('cryptds key list --backup PATH DATASTORE' shows which keys a backup needs; then\n"+
			"  'cryptds key destroy DATASTORE KEKID'). Plaintext backups need no key.\n", r.VM)
	}
	if n := len(r.RemovedLeftovers); n > 0 {
		fmt.Fprintf(w, "  removed %s of an interrupted run\n", plural(n, "leftover", "leftovers"))
	}
	return nil
}
