package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/internal/mountinfo"
	"github.com/cryptds/cryptds/internal/procfd"
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
					return withCode(ExitMount, fmt.Errorf("unmount %s: busy; %s", mnt, busyReason(mnt, mounts)))
				}
				return withCode(ExitMount, fmt.Errorf("unmount %s: %w", mnt, err))
			}
			return nil
		},
	}
}

// busyReason says what keeps mnt busy: the open files under it, else the
// processes whose working or root directory is in it, else the mounts
// below it; never an empty list.
func busyReason(mnt string, mounts []mountinfo.Entry) string {
	if files := openFilesUnder(mnt); len(files) > 0 {
		return fmt.Sprintf("%s: %s", plural(len(files), "open file", "open files"), strings.Join(files, ", "))
	}
	if dirs := procfd.DirsUnder(mnt); len(dirs) > 0 {
		var out []string
		for _, d := range dirs {
			out = append(out, fmt.Sprintf("%s (%s pid %d, its %s)", d.Path, d.Command, d.PID, d.Kind))
		}
		return fmt.Sprintf("%s in use: %s", plural(len(out), "directory", "directories"), strings.Join(out, ", "))
	}
	var below []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Point, mnt+"/") {
			below = append(below, m.Point)
		}
	}
	if len(below) > 0 {
		return fmt.Sprintf("%s below it: %s", plural(len(below), "mount", "mounts"), strings.Join(below, ", "))
	}
	return "no open file, working directory or mount below it was found (a file may be memory-mapped, or one was just closed: try again)"
}
