package objcrypt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// PolicyVersion1 is the only VM policy version this build reads and writes.
const PolicyVersion1 = 1

// MaxPolicySize bounds the policy xattr so a hostile value cannot make us
// allocate much.
const MaxPolicySize = 4096

// MaxKMSNameLen bounds the informational kms field of a policy.
const MaxKMSNameLen = 1024

// Policy is a VM directory's encryption policy, stored as JSON in the
// backing directory's user.cryptds.policy xattr. New objects created under
// the directory get headers built from it.
type Policy struct {
	Version    int       `json:"v"`
	VMID       VMID      `json:"vm_id"`
	KEKID      string    `json:"kek_id"`
	KMS        string    `json:"kms,omitempty"` // which KMS holds the KEK (informational)
	WrappedDEK []byte    `json:"wrapped_dek"`
	Created    time.Time `json:"created"`
	Rotated    time.Time `json:"rotated,omitzero"`
}

// MarshalBinary encodes the policy for the xattr.
func (p *Policy) MarshalBinary() ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(p)
}

func (p *Policy) validate() error {
	if p.Version != PolicyVersion1 {
		return fmt.Errorf("policy version %d: %w", p.Version, ErrVersion)
	}
	if err := checkKEKID(p.KEKID); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if len(p.KMS) > MaxKMSNameLen {
		return fmt.Errorf("policy kms field of %d bytes exceeds %d: %w", len(p.KMS), MaxKMSNameLen, ErrHeader)
	}
	if err := CheckPrintable(p.KMS); err != nil {
		return fmt.Errorf("policy kms field: %w", err)
	}
	if len(p.WrappedDEK) != WrappedDEKSize {
		return fmt.Errorf("policy wrapped DEK length %d, want %d: %w", len(p.WrappedDEK), WrappedDEKSize, ErrHeader)
	}
	return nil
}

// ParsePolicy decodes and validates a policy xattr value. Unlike the binary
// header it accepts any JSON spelling of the object (field order, white
// space, escapes), so a policy re-encoded by another tool still reads;
// MarshalBinary of the result is the canonical form (FuzzParsePolicy checks
// that it is a fixed point). Unknown fields and trailing data are errors.
func ParsePolicy(b []byte) (*Policy, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("policy of %d bytes exceeds %d: %w", len(b), MaxPolicySize, ErrHeader)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %v: %w", err, ErrHeader)
	}
	// Only white space may follow the object. (dec.More alone would accept a
	// trailing '}' or ']'.)
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("policy has trailing data: %w", ErrHeader)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// NewHeader returns the header for a new object of this VM.
func (p *Policy) NewHeader(id ObjectID) *Header {
	return &Header{
		Version:    Version1,
		Suite:      SuiteAES256GCM,
		ObjectID:   id,
		VMID:       p.VMID,
		KEKID:      p.KEKID,
		WrappedDEK: bytes.Clone(p.WrappedDEK),
	}
}
