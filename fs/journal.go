package fs

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cryptds/cryptds/journal"
	"github.com/cryptds/cryptds/objcrypt"
	"golang.org/x/sys/unix"
)

// Stored blocks written through the page cache go through the journal
// (package journal): a buffered pwrite cut by SIGKILL between two pages
// would leave a 4128-byte block half new and half old, failing
// authentication and losing the bytes a read-modify-write carried over.
// With the journal, the next mount finishes every write a killed daemon
// had in flight, so each block reads old or new. Writes that stay inside
// one page are not cut and are not journaled; O_DIRECT writes are not
// either, because the kernel submits them whole once it has pinned the
// buffer, and a kill does not stop a submitted request.

// Journal sizing: a write is journaled in pieces of at most
// journalBlocks stored blocks (each piece lands whole or not at all, so a
// kill between pieces still leaves every block old or new); journalSlots
// writes can be in flight at once, the rest wait for a slot.
const (
	journalBlocks = 32
	journalSlots  = 16
)

// journalTarget names an object's backing file for the journal: its
// object id (checked at replay, so a file replaced since is left alone)
// and its file handle (found again across renames). Nil when the backing
// filesystem has no file handles: the object is then written unjournaled.
func journalTarget(fd int, id objcrypt.ObjectID) []byte {
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return nil
	}
	t := make([]byte, 0, len(id)+4+len(h.Bytes()))
	t = append(t, id[:]...)
	t = binary.BigEndian.AppendUint32(t, uint32(h.Type()))
	return append(t, h.Bytes()...)
}

// storeAt writes stored bytes buf at backing offset off of f's buffered
// descriptor with pw, journaled, and returns how many bytes reached the
// file (on an error, exactly the prefix buf[:n], as pwriteCounted).
func (f *cryptFile) storeAt(pw ioAtFunc, buf []byte, off int64) (int, error) {
	j, target := f.r.journal, f.o.target
	if j == nil || target == nil {
		return pwriteCounted(pw, f.fd, buf, off)
	}
	done := 0
	for done < len(buf) {
		n := min(len(buf)-done, j.MaxData())
		piece, at := buf[done:done+n], off+int64(done)
		// A write inside one page cannot be cut by a kill.
		cuttable := at/pageSize != (at+int64(n)-1)/pageSize
		var e journal.Entry
		if cuttable {
			var err error
			if e, err = j.Begin(target, at, piece); err != nil {
				return done, err
			}
		}
		w, err := pwriteCounted(pw, f.fd, piece, at)
		if cuttable {
			e.Done()
		}
		done += w
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// openJournal opens the journal and finishes the writes a killed daemon
// left in flight, before the mount serves anything.
func (r *Root) openJournal(path string) error {
	j, recs, err := journal.Open(path, journalSlots, journalBlocks*cbs)
	if err != nil {
		return err
	}
	if len(recs) > 0 {
		done, err := r.replayAll(recs)
		if err != nil {
			j.Close()
			return err
		}
		r.log.Warn("cryptds: finished the block writes a killed daemon left in flight", "writes", done, "of", len(recs), "journal", path)
	}
	j.Reset()
	r.journal = j
	if _, _, err := unix.NameToHandleAt(r.node.pfd.fd, "", unix.AT_EMPTY_PATH); err != nil {
		r.log.Warn("cryptds: the backing filesystem gives no file handles, so block writes are not journaled: a killed daemon may leave the block it was writing unreadable", "err", err)
	}
	return nil
}

// replayAll replays recs and returns how many it wrote; a record whose
// file is gone or cannot be written is logged and skipped.
func (r *Root) replayAll(recs []journal.Record) (int, error) {
	// open_by_handle_at wants a descriptor of the filesystem that is not
	// O_PATH, and the node tree keeps only O_PATH ones.
	mountFD, err := unix.Open(r.cfg.Backing, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s to finish writes a killed daemon left in flight: %w", r.cfg.Backing, err)
	}
	defer unix.Close(mountFD)
	done := 0
	for _, rec := range recs {
		if err := r.replay(mountFD, rec); err != nil {
			r.log.Warn("cryptds: cannot finish a write a killed daemon left in flight", "offset", rec.Off, "bytes", len(rec.Data), "err", err)
			continue
		}
		done++
	}
	return done, nil
}

// errJournalStale: the journal entry's file is gone or is another object.
var errJournalStale = errors.New("file gone or replaced since")

// replay writes one journal record to its file, if that file still holds
// the object the record was written for.
func (r *Root) replay(mountFD int, rec journal.Record) error {
	var id objcrypt.ObjectID
	if len(rec.Target) < len(id)+4 {
		return fmt.Errorf("journal target of %d bytes: %w", len(rec.Target), errJournalStale)
	}
	copy(id[:], rec.Target)
	h := unix.NewFileHandle(int32(binary.BigEndian.Uint32(rec.Target[len(id):])), rec.Target[len(id)+4:])
	fd, err := unix.OpenByHandleAt(mountFD, h, unix.O_RDWR|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open by handle: %w (%w)", err, errJournalStale)
	}
	defer unix.Close(fd)
	hdr, err := r.readHeaderInner(fd)
	if err != nil {
		return err
	}
	if hdr.ObjectID != id {
		return errJournalStale
	}
	return pwriteFull(fd, rec.Data, rec.Off)
}

// Close closes what the node tree holds beyond its descriptors: the
// journal, which is removed when no write is in flight. Call it once the
// server has stopped.
func (r *Root) Close() error {
	if r.journal == nil {
		return nil
	}
	err := r.journal.Close()
	r.journal = nil
	return err
}
