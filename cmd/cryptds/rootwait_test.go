package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cfs "github.com/cryptds/cryptds/fs"
	"github.com/cryptds/cryptds/journal"
	"github.com/cryptds/cryptds/objcrypt"
)

// TestNewRootAfterPrevious: a journal held by a daemon of an unmounted
// datastore (one still exiting) is waited for, with a log line; held while
// the datastore is mounted, it fails at once.
func TestNewRootAfterPrevious(t *testing.T) {
	for _, c := range []struct {
		name     string
		mounted  bool
		wantErr  bool
		wantWait bool
	}{
		{"previous daemon exiting", false, false, true},
		{"datastore mounted elsewhere", true, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			jpath := filepath.Join(t.TempDir(), "journal")
			held, _, err := journal.Open(jpath, 1, 4096) // the previous daemon's lock
			if err != nil {
				t.Fatal(err)
			}
			released := make(chan struct{})
			go func() {
				time.Sleep(300 * time.Millisecond)
				held.Close()
				close(released)
			}()
			var logs bytes.Buffer
			cfg := cfs.Config{Backing: t.TempDir(), JournalPath: jpath, DatastoreID: "ds", KMSName: "none", Keys: noKeys{},
				Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			start := time.Now()
			r, err := newRootAfterPrevious(context.Background(), cfg, func() bool { return c.mounted }, cfg.Logger)
			took := time.Since(start)
			<-released
			if c.wantErr {
				if !errors.Is(err, journal.ErrBusy) || took > 200*time.Millisecond {
					t.Fatalf("err %v after %v, want ErrBusy at once", err, took)
				}
				return
			}
			if err != nil {
				t.Fatalf("after the previous daemon released the journal: %v", err)
			}
			r.Close()
			if took < 250*time.Millisecond {
				t.Errorf("returned after %v, before the journal was released", took)
			}
			if got := strings.Contains(logs.String(), "waiting for the previous daemon"); got != c.wantWait {
				t.Errorf("log says it waited: %v, want %v\n%s", got, c.wantWait, logs.String())
			}
		})
	}
}

// noKeys is a key source that is never asked (no file is opened).
type noKeys struct{}

func (noKeys) KEK(context.Context, string) (objcrypt.Key, error) { return nil, errors.New("no keys") }
func (noKeys) NewKEK(context.Context, string) (string, error)    { return "", errors.New("no keys") }
