package devkms

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"
)

const storeFile = "keys.json"

// storeVersion is the layout of keys.json; bump it on incompatible changes.
const storeVersion = 1

// object is one managed object (only AES symmetric keys are supported).
// Enumerations are stored as their KMIP numbers.
type object struct {
	ID          string     `json:"id"`
	Owner       string     `json:"owner"` // CN of the client certificate that created it
	Names       []string   `json:"names,omitempty"`
	State       uint32     `json:"state"`
	Algorithm   uint32     `json:"algorithm"`
	Length      int32      `json:"length"`
	UsageMask   int32      `json:"usage_mask"`
	Key         []byte     `json:"key"` // plaintext: this is why the dev KMS is not for production
	Created     time.Time  `json:"created"`
	Activated   *time.Time `json:"activated,omitempty"`
	Deactivated *time.Time `json:"deactivated,omitempty"`
	Compromised *time.Time `json:"compromised,omitempty"`
	Revocation  uint32     `json:"revocation_reason,omitempty"`
}

func (o *object) clone() *object {
	c := *o
	c.Names = slices.Clone(o.Names)
	c.Key = slices.Clone(o.Key)
	return &c
}

type storeFileV1 struct {
	Version int       `json:"version"`
	Warning string    `json:"warning"`
	Objects []*object `json:"objects"`
}

// store keeps every object in memory and rewrites the whole file on each
// change: fine for the handful of keys a demo or a test creates.
type store struct {
	path string

	mu   sync.Mutex
	objs map[string]*object
}

func openStore(path string) (*store, error) {
	s := &store{path: path, objs: map[string]*object{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, s.saveLocked()
	}
	if err != nil {
		return nil, err
	}
	var f storeFileV1
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if f.Version != storeVersion {
		return nil, fmt.Errorf("%s: layout version %d, want %d", path, f.Version, storeVersion)
	}
	for _, o := range f.Objects {
		if o == nil || o.ID == "" || s.objs[o.ID] != nil {
			return nil, fmt.Errorf("%s: missing or duplicate object id", path)
		}
		s.objs[o.ID] = o
	}
	return s, nil
}

// saveLocked writes every object atomically; the caller holds mu.
func (s *store) saveLocked() error {
	f := storeFileV1{Version: storeVersion, Warning: Warning, Objects: make([]*object, 0, len(s.objs))}
	for _, o := range s.objs {
		f.Objects = append(f.Objects, o)
	}
	slices.SortFunc(f.Objects, func(a, b *object) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	data, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path, data, 0o600); err != nil {
		return fmt.Errorf("save key store: %w", err)
	}
	return nil
}

// get returns a copy of object id, so callers can change it and put it back.
func (s *store) get(id string) (*object, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[id]
	if !ok {
		return nil, false
	}
	return o.clone(), true
}

// update applies fn to a copy of object id under the store lock and saves;
// fn returning a nil object deletes it. Nothing changes if fn or the save
// fails.
func (s *store) update(id string, fn func(o *object) (*object, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.objs[id]
	var cur *object
	if ok {
		cur = old.clone()
	}
	next, err := fn(cur)
	if err != nil {
		return err
	}
	if next == nil {
		delete(s.objs, id)
	} else {
		s.objs[id] = next
	}
	if err := s.saveLocked(); err != nil {
		if ok {
			s.objs[id] = old
		} else {
			delete(s.objs, id)
		}
		return err
	}
	return nil
}

// list returns copies of the objects fn accepts, oldest first.
func (s *store) list(fn func(o *object) bool) []*object {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*object
	for _, o := range s.objs {
		if fn(o) {
			out = append(out, o.clone())
		}
	}
	slices.SortFunc(out, func(a, b *object) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}
