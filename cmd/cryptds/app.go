package main

import (
	"fmt"
	"io"
	"runtime/debug"

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
	return withCode(ExitUsage, fmt.Errorf("%w (see 'cryptds %s --help')", err, c.Command.FullName()))
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version and build information",
		Action: func(c *cli.Context) error {
			v, goVer := "(devel)", ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				goVer = bi.GoVersion
				if bi.Main.Version != "" {
					v = bi.Main.Version
				}
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v += " " + s.Value
					}
				}
			}
			_, err := fmt.Fprintf(c.App.Writer, "cryptds %s (%s, format v1)\n", v, goVer)
			return err
		},
	}
}
