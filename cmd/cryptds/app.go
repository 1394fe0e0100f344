package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// newApp builds the command tree. Commands are data; each action is a small
// function in its own file that returns an error (never exits).
func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "cryptds",
		Usage: "transparent per-VM encryption for VM datastores",
		Description: "cryptds mounts an encrypting FUSE view of a VM datastore. Objects of VMs whose\n" +
			"directory has an encryption policy are encrypted with that VM's key on the\n" +
			"way to the backing store; QEMU, backup tools and fio see plaintext.",
		Writer:               stdout,
		ErrWriter:            stderr,
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		OnUsageError:         usageError,
		// Errors go back to run, which prints them and picks the exit
		// code; urfave's default handler would os.Exit on its own.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			mountCommand(),
			umountCommand(),
			kmsCommand(),
			inspectCommand(),
			fsckCommand(),
			vmCommand(),
			keyCommand(),
			versionCommand(),
			completionCommand(),
			manCommand(),
		},
	}
	app.Action = appAction
	guardCommands("", app.Commands)
	return app
}

// usageError gives flag and argument mistakes their own exit code.
func usageError(c *cli.Context, err error, _ bool) error {
	if strings.Contains(err.Error(), "key-ttl") {
		// urfave's "parse error" does not say what a duration looks like.
		err = fmt.Errorf("%w: --key-ttl wants %s", err, keyTTLFormat)
	}
	return withCode(ExitUsage, fmt.Errorf("%w (see 'cryptds %s --help')", err, c.Command.FullName()))
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version and build information",
		Action: func(c *cli.Context) error {
			bi, _ := debug.ReadBuildInfo()
			_, err := fmt.Fprintln(c.App.Writer, versionString(bi, linkedCommit, linkedModified))
			return err
		},
	}
}

// linkedCommit and linkedModified are set by `make build` with -ldflags -X
// from git, for builds whose toolchain does not stamp VCS information
// (GOFLAGS=-buildvcs=false, a build outside the checkout's root).
var linkedCommit, linkedModified string

// versionString is "cryptds VERSION commit REV[ (modified)] built TIME
// (GO, format v1)": the module version and the vcs.* settings Go stamps
// into the binary, else the values make linked in.
func versionString(bi *debug.BuildInfo, commit, modified string) string {
	v, goVer, when := "(devel)", "", ""
	if bi != nil {
		goVer = bi.GoVersion
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				when = s.Value
			}
		}
	}
	out := "cryptds " + v
	if commit == "" {
		out += " commit unknown (built without VCS information)"
	} else {
		out += " commit " + commit
		if modified == "true" {
			out += " (modified)"
		}
	}
	if when != "" {
		out += " committed " + when
	}
	return fmt.Sprintf("%s (%s, format v1)", out, goVer)
}
