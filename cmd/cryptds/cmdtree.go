package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// guardCommands walks the command tree: a command with subcommands gets an
// action that calls an unknown subcommand by its name (urfave's default
// said "No help topic for 'X'"), and every leaf action first refuses a
// flag given after the positional arguments, which urfave would otherwise
// count as an argument ("got 5 arguments").
func guardCommands(prefix string, cmds []*cli.Command) {
	for _, c := range cmds {
		name := strings.TrimSpace(prefix + " " + c.Name)
		if len(c.Subcommands) > 0 {
			if c.Action == nil {
				c.Action = unknownCommandAction(name)
			}
			guardCommands(name, c.Subcommands)
			continue
		}
		if c.Action != nil {
			c.Action = refuseLateFlags(c.Action)
		}
	}
}

// unknownCommandAction shows help when called bare and names an unknown
// subcommand as such (exit 2).
func unknownCommandAction(name string) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() == 0 {
			return cli.ShowSubcommandHelp(c)
		}
		return withCode(ExitUsage, fmt.Errorf("unknown command %q (see 'cryptds %s --help')", strings.TrimSpace(name+" "+c.Args().First()), name))
	}
}

// appAction is the top level's: help when bare, else an unknown command.
func appAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.ShowAppHelp(c)
	}
	return withCode(ExitUsage, fmt.Errorf("unknown command %q (see 'cryptds --help')", c.Args().First()))
}

// refuseLateFlags wraps a leaf action: an argument after the first
// positional one that names one of the command's flags was meant as a
// flag; say that flags go first instead of miscounting arguments.
func refuseLateFlags(next cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		if f := lateFlag(c); f != "" {
			return withCode(ExitUsage, fmt.Errorf("flag %s comes after the arguments; flags go first: cryptds %s [flags] %s",
				f, c.Command.FullName(), c.Command.ArgsUsage))
		}
		return next(c)
	}
}

// lateFlag returns the first argument that is one of c's flags (--name,
// -name or --name=value), or "".
func lateFlag(c *cli.Context) string {
	names := map[string]bool{"help": true, "h": true}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			names[n] = true
		}
	}
	for _, a := range c.Args().Slice() {
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			continue
		}
		n, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if names[n] {
			return a
		}
	}
	return ""
}
