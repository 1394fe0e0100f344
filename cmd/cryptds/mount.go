package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/cryptds/cryptds/devkms"
	cfs "github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/keyring"
	"github.com/cryptds/cryptds/kmipclient"
	"github.com/cryptds/cryptds/metrics"
	"github.com/cryptds/cryptds/objcrypt"
)

// Defaults of the mount flags, defined once; README's table is checked
// against them by a test.
const (
	defaultStateDir = "/var/lib/cryptds"
	defaultKeyCache = "memory"
	defaultKeyTTL   = 24 * time.Hour
	defaultDevAddr  = "127.0.0.1:5696"
)

// kmsFlags are shared by every command that talks to the key server.
func kmsFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "kmip", Usage: "KMIP server `ADDR[,ADDR...]` (host:port), tried in order", EnvVars: []string{"CRYPTDS_KMIP"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "kmip-ca", Usage: "CA certificate `FILE` that signed the KMIP server certificate", EnvVars: []string{"CRYPTDS_KMIP_CA"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "kmip-cert", Usage: "client certificate `FILE` for mutual TLS", EnvVars: []string{"CRYPTDS_KMIP_CERT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "kmip-key", Usage: "client private key `FILE` for mutual TLS", EnvVars: []string{"CRYPTDS_KMIP_KEY"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "dev", Usage: "run the built-in dev KMS in-process (NOT for production; state under --state-dir)", EnvVars: []string{"CRYPTDS_DEV"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "state-dir", Value: defaultStateDir, Usage: "`DIR` for the dev KMS state, the disk key cache and the write journal", EnvVars: []string{"CRYPTDS_STATE_DIR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: []string{"CRYPTDS_LOG_FORMAT"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "debug", Usage: "debug logging", EnvVars: []string{"CRYPTDS_DEBUG"}}),
		&cli.StringFlag{Name: "config", Usage: "TOML config `FILE`; keys are flag names (flags > env vars > file > defaults)", EnvVars: []string{"CRYPTDS_CONFIG"}},
	}
}

func mountFlags() []cli.Flag {
	return append(kmsFlags(),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "key-cache", Value: defaultKeyCache, Usage: "where unwrapped keys are cached: memory, disk (encrypted, survives restarts) or off", EnvVars: []string{"CRYPTDS_KEY_CACHE"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "key-ttl", Value: defaultKeyTTL, Usage: "how long a cached key is served without asking the KMS (12h, 30m...); 0: no offline use, every open asks the KMS and keys leave memory with the last close", EnvVars: []string{"CRYPTDS_KEY_TTL"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "allow-other", Usage: "let other users (e.g. libvirt-qemu) use the mount; unix permissions are enforced", EnvVars: []string{"CRYPTDS_ALLOW_OTHER"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "read-only", Usage: "mount read-only: no write journal, no policy or key changes, opens for writing fail with EROFS (a backup host, a second view)", EnvVars: []string{"CRYPTDS_READ_ONLY"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "fuse-debug", Usage: "trace every FUSE request (very verbose)", EnvVars: []string{"CRYPTDS_FUSE_DEBUG"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics on http://`ADDR`/metrics (loopback host:port, e.g. 127.0.0.1:9523); off when empty", EnvVars: []string{"CRYPTDS_METRICS_LISTEN"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "metrics-listen-any", Usage: "allow a non-loopback --metrics-listen address (metrics reveal VM activity)", EnvVars: []string{"CRYPTDS_METRICS_LISTEN_ANY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-file", Usage: "append the daemon's log to `FILE` instead of stderr (errors that stop the command still go to stderr)", EnvVars: []string{"CRYPTDS_LOG_FILE"}}),
	)
}

func mountCommand() *cli.Command {
	flags := mountFlags()
	// pinned records the flags set on the command line or by env var
	// before the config file is applied, so a SIGHUP reload of the file
	// keeps their precedence. It belongs to this command value only.
	pinned := map[string]bool{}
	loadConfig := loadConfigBefore(flags)
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount the encrypting view of DATASTORE at MOUNTPOINT (runs in the foreground)",
		ArgsUsage: "DATASTORE MOUNTPOINT",
		Description: "Examples:\n" +
			"   cryptds mount --dev --state-dir /tmp/kms /srv/ds /mnt/ds\n" +
			"   cryptds mount --kmip kms1:5696,kms2:5696 --kmip-ca ca.pem --kmip-cert host.pem --kmip-key host.key /srv/ds /mnt/ds\n" +
			"   cryptds mount --config /etc/cryptds/ds1.toml /srv/ds /mnt/ds\n" +
			"   cryptds mount --dev --state-dir /tmp/kms --metrics-listen 127.0.0.1:9523 --allow-other /srv/ds /mnt/ds\n\n" +
			"The mount is ready when 'mountpoint -q MOUNTPOINT' succeeds. SIGINT or SIGTERM unmount\n" +
			"cleanly; if files are still open the daemon names them, keeps serving and unmounts\n" +
			"as soon as the last one is closed.\n\n" +
			"As a service: with NOTIFY_SOCKET set (systemd Type=notify) it sends READY=1 once\n" +
			"mounted and STOPPING=1 when unmounting; SIGHUP re-reads --config and applies\n" +
			"log-format, debug and key-ttl at once (other changes are logged as needing a remount).",
		Flags: flags,
		Before: func(c *cli.Context) error {
			for _, f := range flags {
				if n := f.Names()[0]; c.IsSet(n) {
					pinned[n] = true
				}
			}
			if err := loadConfig(c); err != nil {
				return err
			}
			return checkKeyTTL(c)
		},
		OnUsageError: usageError,
		Action:       func(c *cli.Context) error { return mountAction(c, pinned) },
	}
}

// keyStack is everything that serves keys to the filesystem; close releases
// it in reverse order.
type keyStack struct {
	ring   *keyring.Ring
	client *kmipclient.Client
	dev    *devkms.Server
	kmsID  string
}

func (k *keyStack) close() {
	if k.ring != nil {
		_ = k.ring.Close()
	}
	if k.client != nil {
		_ = k.client.Close()
	}
	if k.dev != nil {
		_ = k.dev.Close()
	}
}

// openKMS connects to the KMS named by the flags (or starts the dev KMS).
// observe (may be nil) sees every KMIP round trip; lazy defers the first
// connection (a host starting from its disk key cache while the KMS is
// down must not fail here).
func openKMS(c *cli.Context, log *slog.Logger, observe func(op, endpoint string, d time.Duration, err error), lazy bool) (*keyStack, error) {
	ks := &keyStack{}
	cfg := kmipclient.Config{
		Endpoints: c.StringSlice("kmip"),
		CAFile:    c.String("kmip-ca"),
		CertFile:  c.String("kmip-cert"),
		KeyFile:   c.String("kmip-key"),
		Logger:    log,
		Observe:   observe,
		Lazy:      lazy,
	}
	if c.Bool("dev") {
		if len(cfg.Endpoints) > 0 {
			return nil, withCode(ExitUsage, errors.New("--dev and --kmip exclude each other"))
		}
		dir := filepath.Join(c.String("state-dir"), "devkms")
		srv, err := devkms.New(devkms.Config{StateDir: dir, Listen: "127.0.0.1:0", Logger: log})
		if err != nil {
			return nil, withCode(ExitKMS, fmt.Errorf("start dev KMS: %w", err))
		}
		ks.dev = srv // devkms.New has logged its NOT-for-production warning
		cfg.Endpoints = []string{srv.Addr()}
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = srv.ClientCredentials()
	}
	if len(cfg.Endpoints) == 0 {
		return nil, withCode(ExitUsage, errors.New("no key server: give --kmip ADDR (with --kmip-ca/--kmip-cert/--kmip-key) or --dev"))
	}
	if !c.Bool("dev") {
		if err := checkTLSFlags(c); err != nil {
			return nil, err
		}
	}
	ks.kmsID = strings.Join(cfg.Endpoints, ",")
	cl, err := kmipclient.New(c.Context, cfg)
	if err != nil {
		ks.close()
		return nil, withCode(ExitKMS, fmt.Errorf("connect to KMS %s: %w", ks.kmsID, err))
	}
	ks.client = cl
	return ks, nil
}

// mountAction runs the daemon. pinned names the flags given on the command
// line or by env var (see mountCommand).
func mountAction(c *cli.Context, pinned map[string]bool) error {
	if c.NArg() != 2 {
		return withCode(ExitUsage, fmt.Errorf("mount needs DATASTORE and MOUNTPOINT, got %s", plural(c.NArg(), "argument", "arguments")))
	}
	logw, closeLog, err := openLogFile(c.App.ErrWriter, c.String("log-file"))
	if err != nil {
		return err
	}
	defer closeLog()
	log, logs, err := newReloadableLogger(logw, c.String("log-format"), c.Bool("debug"))
	if err != nil {
		return err
	}
	routeLibraryLogs(log)
	setMemoryLimit(log)
	forbidCoreDumps(log)
	datastore, err := filepath.Abs(c.Args().Get(0))
	if err != nil {
		return withCode(ExitUsage, err)
	}
	mnt, err := filepath.Abs(c.Args().Get(1))
	if err != nil {
		return withCode(ExitUsage, err)
	}
	mode, err := keyring.ParseCacheMode(c.String("key-cache"))
	if err != nil {
		return withCode(ExitUsage, fmt.Errorf("--key-cache: %w", err))
	}
	detached, err := detachDeadMounts(datastore)
	for _, p := range detached {
		log.Warn("detached the dead mount of this datastore that a killed cryptds left behind", "mountpoint", p)
	}
	if err != nil {
		return err
	}
	if err := checkMountpoint(mnt, datastore); err != nil {
		return err
	}
	dsID, err := checkDatastore(datastore)
	if err != nil {
		return err
	}
	warnLowFileLimit(log, raiseOpenFileLimit(log), datastore)

	var exp *metrics.Exporter
	if addr := c.String("metrics-listen"); addr != "" {
		exp = metrics.New()
		ms, err := exp.Listen(addr, c.Bool("metrics-listen-any"))
		if err != nil {
			return withCode(ExitUsage, fmt.Errorf("--metrics-listen: %w", err))
		}
		defer ms.Close()
		log.Info("serving metrics", "url", "http://"+ms.Addr()+"/metrics")
	}

	var observe func(op, endpoint string, d time.Duration, err error)
	if exp != nil {
		observe = exp.ObserveKMIP
	}
	ks, err := openKMS(c, log, observe, mode == keyring.CacheDisk)
	if err != nil {
		return err
	}
	defer ks.close()
	pingCtx, cancel := context.WithTimeout(c.Context, 15*time.Second)
	ver, pingErr := ks.client.Ping(pingCtx)
	cancel()
	if pingErr != nil && mode != keyring.CacheDisk {
		return withCode(ExitKMS, fmt.Errorf("KMS %s unreachable at start and no disk key cache (--key-cache disk) to fall back on: %w", ks.kmsID, pingErr))
	}
	if pingErr != nil {
		log.Warn("KMS unreachable at start; serving keys from the disk cache until it returns", "kms", ks.kmsID, "err", pingErr)
	} else {
		log.Info("KMS reachable", "kms", ks.kmsID, "kmip", fmt.Sprint(ver))
	}
	var src keyring.KeySource = ks.client
	if exp != nil {
		src = exp.InstrumentKeySource(ks.client, kmsEndpointOf)
	}
	ttl, err := keyringTTL(c.Duration("key-ttl"))
	if err != nil {
		return withCode(ExitUsage, err)
	}
	ring, err := keyring.Open(src, keyring.Options{
		Cache:       mode,
		Dir:         filepath.Join(c.String("state-dir"), "keycache", dsID),
		HostKeyFile: filepath.Join(c.String("state-dir"), "keycache", "host.key"),
		TTL:         ttl,
		Logger:      log,
	})
	if err != nil {
		return withCode(ExitFailure, fmt.Errorf("open key cache: %w", err))
	}
	ks.ring = ring

	cpus := addSchedulerHeadroom()
	log.Debug("scheduler", "gomaxprocs", runtime.GOMAXPROCS(0), "crypto_workers", cpus)
	pool := objcrypt.NewPool(cpus, 0)
	defer pool.Close()
	readOnly := c.Bool("read-only")
	jpath := ""
	if !readOnly { // a read-only mount writes nothing, so it journals nothing
		jpath = journalPath(c.String("state-dir"), dsID)
		if err := os.MkdirAll(filepath.Dir(jpath), 0o700); err != nil {
			return withCode(ExitMount, fmt.Errorf("journal directory: %w", err))
		}
	}
	fcfg := cfs.Config{
		Backing:     datastore,
		Keys:        mountKeys{Ring: ring, kms: ks.client},
		Pool:        pool,
		Logger:      log,
		DatastoreID: dsID,
		KMSName:     ks.kmsID,
		JournalPath: jpath,
		// The VM record is the host's own knowledge of which directories
		// are encrypted VMs; it must not live on the backing store.
		VMRecordPath: vmRecordPath(c.String("state-dir"), dsID),
	}
	if exp != nil {
		fcfg.Observe = exp.ObserveOp
	}
	root, err := newRootAfterPrevious(c.Context, fcfg, func() bool { return datastoreMounted(datastore) }, log)
	if err != nil {
		return withCode(ExitMount, fmt.Errorf("mount %s on %s: %w", datastore, mnt, err))
	}
	defer func() {
		if err := root.Close(); err != nil {
			log.Error("close the write journal", "err", err)
		}
	}()
	server, err := cfs.MountRoot(mnt, root, cfs.MountOptions{AllowOther: c.Bool("allow-other"), Debug: c.Bool("fuse-debug"), FsName: fsName(datastore), ReadOnly: readOnly})
	if err != nil {
		return withCode(ExitMount, fmt.Errorf("mount %s on %s: %w", datastore, mnt, err))
	}
	if exp != nil {
		if err := exp.Attach(root, ring); err != nil {
			log.Error("metrics: cannot export mount counters", "err", err)
		}
	}
	log.Info("mounted", "datastore", datastore, "mountpoint", mnt, "datastore_id", dsID, "key_cache", c.String("key-cache"), "read_only", readOnly)
	notify(log, "READY=1\nSTATUS=serving "+mnt)
	rl := &reloader{c: c, pinned: pinned, file: c.String("config"), logs: logs, log: log,
		live:      liveSettings{logFormat: c.String("log-format"), debug: c.Bool("debug"), keyTTL: ring.TTL()},
		setKeyTTL: ring.SetTTL}
	return serveUntilUnmounted(c.Context, server, mnt, log, func() {
		notify(log, "RELOADING=1")
		if err := rl.reload(); err != nil {
			log.Error("config reload failed; nothing changed", "err", err)
		}
		notify(log, "READY=1")
	})
}

// journalPath is where the write journal of datastore dsID lives (mount
// writes it, fsck reads it).
func journalPath(stateDir, dsID string) string {
	return filepath.Join(stateDir, "journal", dsID)
}

// vmRecordPath is where the mount keeps its record of datastore dsID's
// encrypted VMs (mount writes it, fsck reads it).
func vmRecordPath(stateDir, dsID string) string {
	return filepath.Join(stateDir, "vms", dsID+".json")
}

// kmsEndpointOf names the KMS endpoint(s) a KMIP client error came from,
// for the per-endpoint error metric.
func kmsEndpointOf(err error) string {
	var ke *kmipclient.Error
	if errors.As(err, &ke) {
		return ke.Endpoint
	}
	return ""
}

// unmounter is the part of *fuse.Server the signal loop needs.
type unmounter interface {
	Unmount() error
	Wait()
}

// serveUntilUnmounted waits until the mount goes away (cryptds umount,
// umount(8)) or a signal asks us to unmount. A busy mount is never forced:
// the daemon names the open files and retries every second, so it
// unmounts as soon as the last one is closed. SIGHUP calls reload (if not
// nil) and keeps serving. The service manager hears STOPPING=1 when an
// unmount is first asked for.
func serveUntilUnmounted(ctx context.Context, srv unmounter, mnt string, log *slog.Logger, reload func()) error {
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctxDone := ctx.Done()
	var retry <-chan time.Time
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	var lastReport time.Time
	stopping := false
	attempt := func() {
		if !stopping {
			stopping = true
			notify(log, "STOPPING=1")
		}
		err := srv.Unmount()
		if err == nil {
			return
		}
		if ticker == nil {
			ticker = time.NewTicker(time.Second)
			retry = ticker.C
		}
		if time.Since(lastReport) >= 30*time.Second {
			lastReport = time.Now()
			log.Error("cannot unmount yet: mount is busy; unmounting as soon as these files are closed",
				"mountpoint", mnt, "err", err, "open_files", openFilesUnder(mnt))
		}
	}
	for {
		select {
		case <-done:
			if !stopping {
				notify(log, "STOPPING=1")
			}
			log.Info("unmounted", "mountpoint", mnt)
			return nil
		case <-ctxDone:
			ctxDone = nil // handle once; later requests come as signals
			log.Info("shutting down, unmounting")
			attempt()
		case s := <-sigs:
			if s == syscall.SIGHUP {
				log.Info("SIGHUP received, reloading config")
				if reload != nil {
					reload()
				}
				continue
			}
			log.Info("signal received, unmounting", "signal", s.String())
			lastReport = time.Time{}
			attempt()
		case <-retry:
			attempt()
		}
	}
}

// defaultMemoryLimit is the daemon's soft heap limit. Under O_DIRECT load
// with many 1 MiB requests in flight, pooled request buffers let the heap
// grow until the next GC (peak RSS 309 MiB in the fio matrix); a soft limit
// makes the GC collect earlier instead. GOMEMLIMIT overrides it.
const defaultMemoryLimit = 128 << 20

func setMemoryLimit(log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	log.Debug("soft memory limit set", "bytes", defaultMemoryLimit)
}

// readerHeadroom is how many scheduler slots (Ps) the daemon runs with
// beyond the CPUs it may use. go-fuse keeps goroutines blocked in read(2)
// on /dev/fuse, and a request handler blocks in pread(2) on the backing
// disk; each holds a P while in the system call. With GOMAXPROCS equal to
// the CPU count all Ps are often parked in system calls, so the runtime's
// monitor takes them back and hands them to other threads: measured 3.4
// context switches per buffered 4 KiB random read instead of 2.6, and
// with two spare Ps those reads ran 1.26x faster (median of 5 alternating
// rounds, docs/BENCHMARKS.md). CPU-bound work does not grow with it: the
// crypto pool keeps one worker per CPU.
const readerHeadroom = 2

// addSchedulerHeadroom adds readerHeadroom to GOMAXPROCS, unless the
// GOMAXPROCS environment variable sets it, and returns the CPU count the
// crypto pool should use: the runtime's own default, which follows cgroup
// CPU limits.
func addSchedulerHeadroom() int {
	cpus := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(cpus + readerHeadroom)
	}
	return cpus
}
