package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:         "umount",
		Aliases:      []string{"unmount"},
		Usage:        "unmount a cryptds mount (no fusermount needed)",
		ArgsUsage:    "MOUNTPOINT",
		Description:  "Example:\n   cryptds umount /mnt/ds\n\nA busy mount is not forced; the files keeping it busy are listed.",
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, errors.New("umount needs MOUNTPOINT"))
			}
			mnt, err := filepath.Abs(c.Args().First())
			if err != nil {
				return withCode(ExitUsage, err)
			}
			mounts, err := readMounts()
			if err != nil {
				return err
			}
			found := false
			for _, m := range mounts {
				if m.Point == mnt && strings.HasPrefix(m.Source, "cryptds:") {
					found = true
				}
			}
			if !found {
				return withCode(ExitMount, fmt.Errorf("%s is not a cryptds mount", mnt))
			}
			if err := syscall.Unmount(mnt, 0); err != nil {
				if errors.Is(err, syscall.EBUSY) {
					return withCode(ExitMount, fmt.Errorf("unmount %s: busy; open files: %s", mnt, strings.Join(openFilesUnder(mnt), ", ")))
				}
				return withCode(ExitMount, fmt.Errorf("unmount %s: %w", mnt, err))
			}
			return nil
		},
	}
}
