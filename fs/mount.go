package fs

import (
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// maxWrite is the largest FUSE request: 1 MiB lets big sequential I/O be
// split over the crypto pool (docs/BENCHMARKS.md).
const maxWrite = 1 << 20

// maxBackground is the kernel's limit of asynchronous requests in flight
// (read-ahead, async direct I/O). It is far above any I/O depth a host's
// VMs use because a direct write waits for the page cache drop of its
// range, which may wait for a read-ahead that needs a free slot
// (pagecache.go, directDropWait); congestion starts at 3/4 of it.
const maxBackground = 4096

// MountOptions are the mount knobs the command line exposes.
type MountOptions struct {
	AllowOther bool   // let other users (QEMU, backup agents) use the mount
	Debug      bool   // trace every FUSE request (payload bytes redacted)
	FsName     string // first column of /proc/mounts; default: the backing directory
	// DebugOut receives the Debug trace; nil: stderr.
	DebugOut io.Writer
	// ReadOnly mounts read-only: the kernel and the daemon (readOnlyFS)
	// refuse every change with EROFS. Give the Root no journal.
	ReadOnly bool
}

// attrTimeout is the kernel attribute and entry cache lifetime. The daemon
// is the only writer of the backing store, so caching is safe; one second
// (the libfuse default) bounds how long attributes changed directly on the
// backing store by an administrator (fsck, restore) stay invisible. File
// data follows at the next open (pagecache.go).
// Negative lookups are not cached, so a file restored on the backing store
// shows up at once.
const attrTimeout = time.Second

// Mount mounts a new Root over mountpoint and returns once the kernel has
// completed INIT. Use NewRoot and MountRoot to keep the Root (OpenFiles,
// Stats).
func Mount(mountpoint string, cfg Config, mo MountOptions) (*fuse.Server, error) {
	r, err := NewRoot(cfg)
	if err != nil {
		return nil, err
	}
	return MountRoot(mountpoint, r, mo)
}

// MountRoot mounts r over mountpoint. It mounts with the mount(2) syscall
// when possible (no fusermount needed as root) and falls back to
// fusermount.
//
// FUSE passthrough is masked off mount-wide: with it, the kernel would do
// reads and writes on a backing descriptor itself, bypassing encryption.
// Async direct I/O is requested so queued O_DIRECT requests (QEMU
// cache=none, fio iodepth>1) reach the daemon in parallel, and
// HANDLE_KILLPRIV_V2 so a buffered write is one request, not two
// (killPrivFS), and DIRECT_IO_ALLOW_MMAP so a file opened O_DIRECT can be
// mapped shared and writable as on ext4 (Linux 6.6 and later; the kernel
// keeps the mapping coherent with the handle's direct I/O by writing back
// and dropping the range before each direct request). The page cache survives writes and opens (explicit data
// cache control and FOPEN_KEEP_CACHE, pagecache.go). Write-back caching
// stays off: a write would return before its ciphertext reached the
// backing store, so a later ENOSPC or EIO would lose a write that had
// succeeded.
func MountRoot(mountpoint string, r *Root, mo MountOptions) (*fuse.Server, error) {
	timeout := attrTimeout
	fsName := mo.FsName
	if fsName == "" {
		fsName = r.cfg.Backing
	}
	opts := &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther: mo.AllowOther,
			// The kernel checks permissions against the modes we report,
			// as a local filesystem would; we never apply a umask again.
			Options:              []string{"default_permissions"},
			Debug:                mo.Debug,
			FsName:               fsName,
			Name:                 "cryptds",
			DirectMount:          true,
			MaxWrite:             maxWrite,
			MaxBackground:        maxBackground,
			DisableSplice:        true, // we always build ReadResultData; splice cannot apply
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			ExtraCapabilities:    fuse.CAP_ASYNC_DIO | fuse.CAP_HANDLE_KILLPRIV_V2 | fuse.CAP_DIRECT_IO_ALLOW_MMAP,
			// The page cache survives writes and opens; pagecache.go
			// says who drops it instead.
			ExplicitDataCacheControl: true,
		},
	}
	if mo.Debug {
		out := mo.DebugOut
		if out == nil {
			out = os.Stderr
		}
		opts.MountOptions.Logger = log.New(&payloadRedactor{w: out}, "", log.LstdFlags|log.Lmicroseconds)
	}
	// gofs.Mount, with killPrivFS between the kernel and the node API,
	// which does not see the requests' kill flags.
	var raw fuse.RawFileSystem = &killPrivFS{RawFileSystem: gofs.NewNodeFS(r, opts)}
	if mo.ReadOnly {
		raw = &readOnlyFS{RawFileSystem: raw}
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro") // for fusermount
		opts.MountOptions.DirectMountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_RDONLY
	}
	server, err := fuse.NewServer(raw, mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fs: mount %s on %s: %w", r.cfg.Backing, mountpoint, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, fmt.Errorf("fs: mount %s on %s: %w", r.cfg.Backing, mountpoint, err)
	}
	stop := make(chan struct{})
	go func() { server.Wait(); close(stop) }()
	go r.pathFDs.evict(stop)
	if err := setReadAhead(mountpoint, readAheadKB); err != nil {
		r.log.Warn("cryptds: kernel read-ahead left at its default", "mountpoint", mountpoint, "err", err)
	}
	return server, nil
}

// readAheadKB is the kernel read-ahead of the mount. FUSE mounts start at
// 128 KiB, so buffered sequential readers (tar, rsync, restic reading a VM
// disk) reached the daemon in small requests that the crypto pool could not
// spread; one max_write (1 MiB) measured 0.84-2.7x per round, median 1.5x
// over 10 alternating rounds, on buffered 1 MiB sequential reads. Eight
// max_writes keep eight requests in flight, which the daemon reads from
// the disk in parallel with O_DIRECT (directread.go): 1.3x more over six
// alternating rounds (docs/BENCHMARKS.md). Random readers are unaffected:
// the kernel grows read-ahead only for sequential access.
const readAheadKB = 8 * maxWrite >> 10

// setReadAhead sets the read-ahead of the mount's backing device info
// through sysfs, the one place the kernel offers it after FUSE INIT.
func setReadAhead(mountpoint string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return fmt.Errorf("stat %s: %w", mountpoint, err)
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(kb)), 0); err != nil {
		return fmt.Errorf("set read-ahead: %w", err)
	}
	return nil
}
