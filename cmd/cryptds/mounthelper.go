package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// helperName is the argv[0] under which the binary acts as mount(8)'s
// helper for `mount -t fuse.cryptds` and fstab entries of that type
// (util-linux runs /sbin/mount.fuse.cryptds SOURCE TARGET [-sfnv] -o OPTS).
const helperName = "mount.fuse.cryptds"

// helperReadyTimeout bounds how long mount(8) waits for the daemon to mount
// (a KMS failover can take a while).
const helperReadyTimeout = 2 * time.Minute

// helperOption is one -o option the helper understands.
type helperOption struct {
	flag     string // the mount flag it becomes
	hasValue bool   // name=VALUE rather than a switch
}

// helperOptions maps -o options to mount flags. Following the fuse convention, options
// are spelled with '_'.
func helperOptions() map[string]helperOption {
	return map[string]helperOption{
		"config":         {"--config", true},
		"allow_other":    {"--allow-other", false},
		"dev_kms":        {"--dev", false},
		"state_dir":      {"--state-dir", true},
		"key_cache":      {"--key-cache", true},
		"key_ttl":        {"--key-ttl", true},
		"metrics_listen": {"--metrics-listen", true},
		"log_format":     {"--log-format", true},
		"debug":          {"--debug", false},
		"ro":             {"--read-only", false},
	}
}

// helperIgnored reports generic mount(8)/fstab options that mean nothing
// to cryptds (or are always on: default_permissions, nosuid, nodev; or
// always off: atime updates from reads, mandatory locks); they are dropped
// quietly. Every option of mount(8)'s FILESYSTEM-INDEPENDENT MOUNT OPTIONS
// is here except ro (--read-only), remount, and sync and dirsync, which
// would promise synchronous writes to the backing disk that cryptds does
// not make.
func helperIgnored(name string) bool {
	switch name {
	case "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "comment",
		"user", "nouser", "users", "owner", "group",
		"suid", "nosuid", "dev", "nodev", "exec", "noexec",
		"atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
		"diratime", "nodiratime", "lazytime", "nolazytime",
		"iversion", "noiversion", "mand", "nomand", "symfollow", "nosymfollow",
		"silent", "loud", "async", "default_permissions",
		// the kernel's FUSE options, which mount(8) copies from the mount
		// table on remount
		"user_id", "group_id", "max_read", "rootmode", "fd", "blksize":
		return true
	}
	return strings.HasPrefix(name, "x-")
}

// helperPlan is a parsed helper command line.
type helperPlan struct {
	source, target string
	mountArgs      []string // flags for `cryptds mount`
	logFile        string
	fake           bool // -f: do everything but mount
	remount        bool // -o remount: change the flags of the mount at target
}

// parseHelperArgs turns `mount.fuse.cryptds SOURCE TARGET [-sfnv] [-t TYPE]
// [-o OPTS]` into the daemon's command line.
func parseHelperArgs(args []string) (*helperPlan, error) {
	p := &helperPlan{}
	var pos []string
	var opts []string
	sloppy := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" || a == "-t" || a == "-N":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s needs a value", a)
			}
			if a == "-o" {
				opts = append(opts, strings.Split(args[i+1], ",")...)
			}
			i++
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, strings.Split(a[2:], ",")...)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for _, f := range a[1:] {
				switch f {
				case 's':
					sloppy = true
				case 'f':
					p.fake = true
				case 'n', 'v':
				default:
					return nil, fmt.Errorf("unknown option -%c", f)
				}
			}
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return nil, fmt.Errorf("usage: %s DATASTORE MOUNTPOINT [-o config=FILE,allow_other,...]", helperName)
	}
	var err error
	if p.source, err = filepath.Abs(pos[0]); err != nil {
		return nil, err
	}
	if p.target, err = filepath.Abs(pos[1]); err != nil {
		return nil, err
	}
	known := helperOptions()
	for _, o := range opts {
		if o == "" {
			continue
		}
		name, val, hasVal := strings.Cut(o, "=")
		if name == "log" && hasVal {
			p.logFile = val
			continue
		}
		if ho, ok := known[name]; ok {
			if ho.hasValue != hasVal {
				return nil, fmt.Errorf("option %q: %s takes %s", o, name, map[bool]string{true: "a value", false: "no value"}[ho.hasValue])
			}
			p.mountArgs = append(p.mountArgs, ho.flag)
			if hasVal {
				p.mountArgs = append(p.mountArgs, val)
			}
			continue
		}
		if helperIgnored(name) {
			continue
		}
		if name == "remount" {
			p.remount = true
			continue
		}
		if !sloppy {
			return nil, fmt.Errorf("unknown option %q (cryptds options: config=FILE, allow_other, dev_kms, state_dir=DIR, key_cache=MODE, key_ttl=DUR, metrics_listen=ADDR, log_format=FMT, debug, log=FILE)", o)
		}
	}
	if p.logFile == "" {
		p.logFile = "/var/log/cryptds/" + strings.ReplaceAll(strings.Trim(p.target, "/"), "/", "-") + ".log"
	}
	return p, nil
}

// runMountHelper is main for argv[0] == mount.fuse.cryptds: start `cryptds
// mount` detached (own session, output appended to the log file), wait
// until the mountpoint is live or the daemon died, and return 0 or the
// daemon's exit code, as mount(8) expects of a helper.
func runMountHelper(args []string, stderr io.Writer) int {
	p, err := parseHelperArgs(args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", helperName, err)
		return ExitUsage
	}
	if p.fake {
		return ExitOK
	}
	if p.remount {
		return remountHelper(p, stderr)
	}
	if mountedHere(p.target, "") {
		fmt.Fprintf(stderr, "%s: %s is already a mount point\n", helperName, p.target)
		return ExitMount
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "%s: find cryptds: %v\n", helperName, err)
		return ExitFailure
	}
	if err := os.MkdirAll(filepath.Dir(p.logFile), 0o750); err != nil {
		fmt.Fprintf(stderr, "%s: log: %v\n", helperName, err)
		return ExitFailure
	}
	logf, err := os.OpenFile(p.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		fmt.Fprintf(stderr, "%s: log: %v\n", helperName, err)
		return ExitFailure
	}
	defer logf.Close()
	cmd := exec.Command(exe, append(append([]string{"mount"}, p.mountArgs...), p.source, p.target)...)
	cmd.Args[0] = "cryptds"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NOTIFY_SOCKET=") { // the daemon is not the unit's main process
			cmd.Env = append(cmd.Env, e)
		}
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "%s: start cryptds: %v\n", helperName, err)
		return ExitFailure
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(helperReadyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if mountedHere(p.target, fsName(p.source)) {
			return ExitOK
		}
		select {
		case err := <-exited:
			code := ExitFailure
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() > 0 {
				code = ee.ExitCode()
			}
			fmt.Fprintf(stderr, "%s: cryptds mount failed (exit %d): %s\n", helperName, code, lastLines(p.logFile, 5))
			return code
		case <-deadline:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			fmt.Fprintf(stderr, "%s: not mounted after %v; see %s\n", helperName, helperReadyTimeout, p.logFile)
			return ExitFailure
		case <-tick.C:
		}
	}
}

// mountedHere reports whether target is a cryptds mount of source (any
// mount when source is empty).
func mountedHere(target, source string) bool {
	ms, err := readMounts()
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Point == target && (source == "" || m.Source == source) {
			return true
		}
	}
	return false
}

// lastLines returns the last n lines of a file, joined with " | ".
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	ls := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " | ")
}

// remountHelper serves `mount -o remount[,ro|rw] MOUNTPOINT`: the kernel
// changes the mount's flags; the daemon is not told. A daemon started
// --read-only keeps refusing changes with EROFS after remount,rw; one
// started read-write is held read-only by the kernel after remount,ro.
func remountHelper(p *helperPlan, stderr io.Writer) int {
	if !mountedHere(p.target, fsName(p.source)) && !mountedHere(p.target, "") {
		fmt.Fprintf(stderr, "%s: %s is not mounted\n", helperName, p.target)
		return ExitMount
	}
	flags := uintptr(syscall.MS_REMOUNT | syscall.MS_NOSUID | syscall.MS_NODEV)
	if slices.Contains(p.mountArgs, "--read-only") {
		flags |= syscall.MS_RDONLY
	}
	if err := syscall.Mount("", p.target, "", flags, ""); err != nil {
		fmt.Fprintf(stderr, "%s: remount %s: %v\n", helperName, p.target, err)
		return ExitMount
	}
	return ExitOK
}
