package kmipclient

import (
	"fmt"

	"github.com/ovh/kmip-go"
)

// Version is a KMIP protocol version. Ping reports the one negotiated with the
// server so operators can see which features (for instance server-side
// Encrypt, from 1.2) are available.
type Version struct {
	Major, Minor int
}

// String formats the version the way the KMIP specification names it ("1.4").
func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Less orders versions so callers can gate features on a minimum.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	return v.Minor < o.Minor
}

func versionOf(p kmip.ProtocolVersion) Version {
	return Version{Major: int(p.ProtocolVersionMajor), Minor: int(p.ProtocolVersionMinor)}
}

// Supported KMIP versions: 1.1 is the floor (DESIGN.md: KEKs are fetched with
// Get and DEKs wrapped locally, which any 1.1 server can do); 1.4 is the
// newest the library speaks. 2.x is never offered: PyKMIP rejects every
// 2.0 message (Debian's python3-pykmip 0.10).
var (
	minVersion = Version{1, 1}
	maxVersion = Version{1, 4}
)

// VersionRange returns the oldest KMIP version the client accepts and the
// newest it offers, for diagnostics and compatibility notes.
func VersionRange() (oldest, newest Version) { return minVersion, maxVersion }

// offeredVersions is what DiscoverVersions proposes, newest first.
func offeredVersions() []kmip.ProtocolVersion {
	return []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_3, kmip.V1_2, kmip.V1_1}
}

// State is the KMIP lifecycle state of a managed object. The keyring uses it
// to tell a key that may serve I/O (Active) from one that must be evicted.
type State int

// KMIP 1.x object states (the numeric values are the protocol's).
const (
	StateUnknown              State = 0
	StatePreActive            State = 1
	StateActive               State = 2
	StateDeactivated          State = 3
	StateCompromised          State = 4
	StateDestroyed            State = 5
	StateDestroyedCompromised State = 6
)

// String names the state as the KMIP specification does.
func (s State) String() string {
	switch s {
	case StatePreActive:
		return "PreActive"
	case StateActive:
		return "Active"
	case StateDeactivated:
		return "Deactivated"
	case StateCompromised:
		return "Compromised"
	case StateDestroyed:
		return "Destroyed"
	case StateDestroyedCompromised:
		return "DestroyedCompromised"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// Usable reports whether a key in this state may protect data: only Active.
// A revoked (Deactivated, Compromised) or never-activated key must not.
func (s State) Usable() bool { return s == StateActive }

func stateOf(s kmip.State) State {
	if s >= kmip.StatePreActive && s <= kmip.StateDestroyedCompromised {
		return State(s)
	}
	return StateUnknown
}
