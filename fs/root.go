package fs

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"syscall"

	"github.com/cryptds/cryptds/journal"
	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Root is the root directory of a cryptds mount. It owns everything that is
// per mount rather than per inode: the configuration, the backing root
// descriptor, the set of open writable handles and the counters.
type Root struct {
	node

	cfg     Config
	log     *slog.Logger
	rand    io.Reader
	rootDev uint64
	stats   counters
	bufs    bufPools
	pwrite  ioAtFunc         // unix.Pwrite for whole-block writes and truncates into a block; tests inject failures
	pread   ioAtFunc         // unix.Pread for O_DIRECT backing reads; tests inject refusals
	journal *journal.Journal // nil: no journal (Config.JournalPath)

	readAroundLimit uint64 // Config.ReadAroundLimit resolved
	pathFDs         *pathFDLimit

	openMu sync.Mutex
	open   map[openHandle]struct{} // writable handles, for OpenFiles

	// hdrMu orders header rewrites (shallow rekey, repair) against header
	// reads at open: readers share it, rewriters hold it exclusively.
	hdrMu sync.RWMutex
	// objMu guards live (every open object and its node, so shred can
	// revoke them) and shredded (KEK ids this mount destroyed).
	objMu    sync.Mutex
	live     map[*objState]*node
	shredded map[string]bool
	shredVMs map[objcrypt.VMID]bool

	// vms is the mount's record of encrypted VMs (vmguard.go); warned
	// remembers what warnOnce has logged.
	vms    *vmreg.Registry
	warned sync.Map
}

var _ gofs.InodeEmbedder = (*Root)(nil)

// openHandle is a registered writable file handle: it knows its node so the
// current path can be computed when OpenFiles is asked.
type openHandle interface {
	handleNode() *node
}

// NewRoot opens the backing directory and returns the root node. The
// backing directory must exist; xattr support is checked by the mount
// command, because a read-only inspection mount may not need it.
func NewRoot(cfg Config) (*Root, error) {
	if cfg.Backing == "" {
		return nil, fmt.Errorf("fs: no backing directory")
	}
	if cfg.Keys == nil {
		return nil, fmt.Errorf("fs: no key source")
	}
	fd, err := unix.Open(cfg.Backing, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fs: open backing directory %s: %w", cfg.Backing, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fs: stat backing directory %s: %w", cfg.Backing, err)
	}
	r := &Root{cfg: cfg, log: cfg.Logger, rand: cfg.Rand, rootDev: st.Dev, open: map[openHandle]struct{}{},
		live: map[*objState]*node{}, shredded: map[string]bool{}, shredVMs: map[objcrypt.VMID]bool{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.rand == nil {
		r.rand = rand.Reader
	}
	r.pwrite, r.pread = unix.Pwrite, unix.Pread
	if r.vms, err = vmreg.Open(cfg.VMRecordPath); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fs: %w", err)
	}
	switch {
	case cfg.ReadAroundLimit > 0:
		r.readAroundLimit = uint64(cfg.ReadAroundLimit)
	case cfg.ReadAroundLimit == 0:
		r.readAroundLimit = defaultReadAroundLimit()
	}
	limit := cfg.MaxPathFDs
	if limit <= 0 {
		limit = defaultPathFDLimit()
	}
	r.pathFDs = newPathFDLimit(limit)
	r.node.r = r
	r.node.pfd = &pathFD{fd: fd, root: true, lim: r.pathFDs}
	if cfg.JournalPath != "" {
		if err := r.openJournal(cfg.JournalPath); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("fs: %w", err)
		}
	}
	return r, nil
}

// OpenFiles lists the files currently open for writing through the mount
// (paths relative to the mount root), so "busy" messages and
// "vm encrypt --force" can say what holds them.
func (r *Root) OpenFiles() []string {
	r.openMu.Lock()
	nodes := make([]*node, 0, len(r.open))
	for h := range r.open {
		nodes = append(nodes, h.handleNode())
	}
	r.openMu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, n := range nodes {
		p := n.relPath()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func (r *Root) registerOpen(h openHandle) {
	r.openMu.Lock()
	r.open[h] = struct{}{}
	r.openMu.Unlock()
}

func (r *Root) unregisterOpen(h openHandle) {
	r.openMu.Lock()
	delete(r.open, h)
	r.openMu.Unlock()
}

// stableAttr maps a backing inode to the FUSE inode identity. Inode numbers
// are the backing ones (mixed with the device when the backing tree crosses
// filesystems); the generation is the birth time, so a reused backing inode
// number is a new FUSE inode rather than a stale one.
func (r *Root) stableAttr(st *unix.Statx_t) gofs.StableAttr {
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	swapped := (dev << 32) | (dev >> 32)
	rootSwapped := (r.rootDev << 32) | (r.rootDev >> 32)
	gen := uint64(1)
	if st.Mask&unix.STATX_BTIME != 0 && (st.Btime.Sec != 0 || st.Btime.Nsec != 0) {
		gen = uint64(st.Btime.Sec)*1e9 + uint64(st.Btime.Nsec)
	}
	return gofs.StableAttr{Mode: uint32(st.Mode) & syscall.S_IFMT, Ino: (swapped ^ rootSwapped) ^ st.Ino, Gen: gen}
}
