package fs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cryptds/cryptds/objcrypt"
	"github.com/cryptds/cryptds/vmreg"
	"golang.org/x/sys/unix"
)

// objState is an open encrypted object, shared by every handle of one
// inode: the object AEAD (so no key lookup happens per block) and the lock
// that keeps blocks untorn. Reads and whole-block writes share mu and take
// their block range in blocks; anything that rewrites a partial block or
// changes the size in another way holds mu exclusively.
type objState struct {
	mu     sync.RWMutex
	blocks blockLocks
	obj    *objcrypt.Object
	id     objcrypt.ObjectID
	refs   int // guarded by the owning node's mu
	// kek is the KEK id the object was opened under; revoked is set when
	// this mount shreds that KEK, and fails every later read and write.
	kek     string
	vm      objcrypt.VMID
	revoked atomic.Bool
	// target names the backing file in journal entries (journal.go);
	// nil: writes of this object are not journaled.
	target []byte
}

// acquireObject returns the node's open object for hdr, unwrapping the DEK
// on first use. The first use also finishes a truncate a crash interrupted
// (shrink.go) through fd, the opening handle's backing descriptor.
func (n *node) acquireObject(ctx context.Context, fd int, hdr *objcrypt.Header) (*objState, error) {
	n.mu.Lock()
	if o := n.obj; o != nil && o.id == hdr.ObjectID {
		o.refs++
		n.mu.Unlock()
		return o, nil
	}
	n.mu.Unlock()
	obj, err := n.r.unwrapObject(ctx, hdr, n.relPath())
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if o := n.obj; o != nil && o.id == hdr.ObjectID {
		o.refs++
		return o, nil
	}
	n.r.finishShrink(fd, obj, n.relPath())
	o := &objState{obj: obj, id: hdr.ObjectID, refs: 1, kek: hdr.KEKID, vm: hdr.VMID}
	if n.r.journal != nil {
		o.target = journalTarget(fd, hdr.ObjectID)
	}
	n.obj = o
	n.r.objMu.Lock()
	n.r.live[o] = n
	n.r.objMu.Unlock()
	return o, nil
}

func (n *node) releaseObject(o *objState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	o.refs--
	if o.refs == 0 && n.obj == o {
		n.obj = nil
		n.r.objMu.Lock()
		delete(n.r.live, o)
		n.r.objMu.Unlock()
	}
}

// unwrapObject fetches the KEK, unwraps the DEK and derives the object key.
// Key copies are zeroed before returning; failures are logged once with the
// file and the key id (never key material).
func (r *Root) unwrapObject(ctx context.Context, hdr *objcrypt.Header, path string) (*objcrypt.Object, error) {
	if r.isShredded(hdr.KEKID, hdr.VMID) {
		return nil, r.errShredded(path, hdr.KEKID)
	}
	if v, ok := r.vms.ByID(hdr.VMID); ok && v.State == vmreg.Shredded {
		return nil, r.errShredded(path, hdr.KEKID)
	}
	ctx, cancel := keyContext(ctx)
	defer cancel()
	kek, err := r.cfg.Keys.KEK(ctx, hdr.KEKID)
	if err != nil {
		r.stats.keyErr.Add(1)
		r.log.Error("cryptds: cannot get KEK", "file", path, "kek", hdr.KEKID, "err", err)
		return nil, fmt.Errorf("KEK %s for %s: %w", hdr.KEKID, path, err)
	}
	defer kek.Zero()
	dek, err := objcrypt.UnwrapDEK(kek, hdr.WrappedDEK, hdr.KEKID, hdr.VMID)
	if err != nil {
		r.stats.keyErr.Add(1)
		r.log.Error("cryptds: DEK does not unwrap under its KEK", "file", path, "kek", hdr.KEKID, "err", err)
		return nil, fmt.Errorf("unwrap DEK of %s (%v): %w", path, err, syscall.EKEYREJECTED)
	}
	defer dek.Zero()
	obj, err := objcrypt.NewObject(dek, hdr.ObjectID, r.rand)
	if err != nil {
		return nil, fmt.Errorf("object key of %s: %w", path, err)
	}
	return obj, nil
}

// readHeader reads and cross-checks both header copies of an open backing
// file. A backing size of 0 is an empty object whose region is not written
// yet (see createEncrypted); any other size below the region is corrupt.
// It reads under hdrMu shared, so it never sees a shallow rekey's rewrite
// half done; a disagreement left by an interrupted rekey is repaired
// (readHeaderTolerant).
func (r *Root) readHeader(ctx context.Context, fd int, path string) (*objcrypt.Header, error) {
	r.hdrMu.RLock()
	h, err := r.readHeaderInner(fd)
	r.hdrMu.RUnlock()
	var mm *headerMismatch
	if errors.As(err, &mm) {
		r.hdrMu.Lock()
		h, err = r.readHeaderTolerant(ctx, fd, path)
		r.hdrMu.Unlock()
	}
	if err != nil {
		r.stats.hdrErr.Add(1)
		r.log.Error("cryptds: bad object header", "file", path, "err", err)
		return nil, fmt.Errorf("header of %s: %w", path, err)
	}
	return h, nil
}

func (r *Root) readHeaderInner(fd int) (*objcrypt.Header, error) {
	xb := make([]byte, 1024)
	sz, err := unix.Fgetxattr(fd, xattrHeader, xb)
	if err != nil {
		if errors.Is(err, unix.ERANGE) {
			return nil, fmt.Errorf("header xattr too large: %w", objcrypt.ErrHeader)
		}
		if errors.Is(err, unix.ENODATA) {
			return nil, fmt.Errorf("header xattr missing (restore it with cryptds fsck --restore-xattrs): %w", objcrypt.ErrHeader)
		}
		return nil, fmt.Errorf("read header xattr: %w", err)
	}
	h, err := objcrypt.ParseHeader(xb[:sz])
	if err != nil {
		return nil, fmt.Errorf("header xattr: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	if st.Size == 0 {
		return h, nil
	}
	region := make([]byte, objcrypt.HeaderRegionSize)
	n, err := preadFull(fd, region, 0)
	if err != nil {
		return nil, err
	}
	if n < len(region) {
		return nil, fmt.Errorf("backing file of %d bytes is shorter than the header region: %w", st.Size, objcrypt.ErrHeader)
	}
	rh, err := objcrypt.ParseRegion(region)
	if err != nil {
		return nil, fmt.Errorf("header region: %w", err)
	}
	if !h.Equal(rh) {
		return nil, &headerMismatch{xattr: h, region: rh}
	}
	return h, nil
}
