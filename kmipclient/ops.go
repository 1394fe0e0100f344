package kmipclient

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// kekUsage is the usage mask every KEK is created with. PyKMIP rejects a
// Create without one (InvalidField); WrapKey/UnwrapKey leave room for
// server-side wrapping on KMIP 1.4 servers.
const kekUsage = kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt |
	kmip.CryptographicUsageWrapKey | kmip.CryptographicUsageUnwrapKey

// KEKSize is the length in bytes of every KEK (AES-256).
const KEKSize = 32

// item returns batch item i as a typed response payload, or the mapped error.
func item[T kmip.OperationPayload](op string, res *result, i int) (T, error) {
	var zero T
	if i >= len(res.items) {
		// The server stopped the batch after an earlier failure; callers
		// check earlier items first, so this is only reached on a server
		// that drops items without saying why.
		return zero, &Error{Op: op, Endpoint: res.endpoint, Err: ErrProtocol, Cause: errors.New("batch item missing from reply")}
	}
	bi := &res.items[i]
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		return zero, reasonError(op, res.endpoint, bi)
	}
	pl, ok := bi.ResponsePayload.(T)
	if !ok {
		return zero, &Error{Op: op, Endpoint: res.endpoint, Err: ErrProtocol,
			Cause: fmt.Errorf("reply payload is %T", bi.ResponsePayload)}
	}
	return pl, nil
}

// CreateKEK creates an AES-256 key named name inside the KMS and activates
// it, on the same server (in a cluster the new key may not have replicated
// yet), and returns its unique identifier. (Create and Activate cannot share
// one message: PyKMIP cannot parse an Activate that relies on the ID
// placeholder.)
//
// Create is never retried once it may have reached the server: the error
// then wraps ErrUnavailable and ErrOutcomeUnknown.
func (c *Client) CreateKEK(ctx context.Context, name string) (string, error) {
	if name == "" {
		return "", errors.New("kmipclient: CreateKEK: empty key name")
	}
	create := &payloads.CreateRequestPayload{
		ObjectType: kmip.ObjectTypeSymmetricKey,
		TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(KEKSize * 8)},
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kekUsage},
			{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{
				NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}},
		}},
	}
	res, cn, err := c.callHold(ctx, "Create", false, create)
	if err != nil {
		return "", err
	}
	cr, err := item[*payloads.CreateResponsePayload]("Create", res, 0)
	if err == nil && cr.UniqueIdentifier == "" {
		err = &Error{Op: "Create", Endpoint: res.endpoint, Err: ErrProtocol, Cause: errors.New("no unique identifier in reply")}
	}
	if err != nil {
		c.release(cn, true)
		return "", err
	}
	id := cr.UniqueIdentifier
	if err := c.activate(ctx, cn, id); err != nil {
		// A PreActive key nobody will use: remove it rather than leave an
		// orphan in the KMS (Destroy of a PreActive key is allowed).
		if derr := c.Destroy(ctx, id); derr != nil {
			c.s.log.Warn("kmip: could not destroy a key left pre-active", "id", id, "name", name, "err", derr)
			return "", fmt.Errorf("key %s created but not activated (and left pre-active): %w", id, err)
		}
		return "", fmt.Errorf("key %s created but not activated (destroyed it): %w", id, err)
	}
	c.s.log.Info("kmip key created", "id", id, "name", name, "endpoint", res.endpoint)
	return id, nil
}

// activate activates id on cn (which it releases); if that connection fails,
// it tries again through the pool.
func (c *Client) activate(ctx context.Context, cn *conn, id string) error {
	req := &payloads.ActivateRequestPayload{UniqueIdentifier: id}
	items, sent, err := c.exchange(ctx, cn, []kmip.OperationPayload{req})
	c.release(cn, err == nil)
	res := &result{items: items, endpoint: cn.ep.addr, version: cn.version}
	if err != nil {
		c.s.log.Debug("kmip activate failed, retrying through the pool", "id", id, "endpoint", cn.ep.addr, "err", err)
		if res, err = c.call(ctx, "Activate", true, req); err != nil {
			return err
		}
		res.resent = res.resent || sent
	}
	if _, err := item[*payloads.ActivateResponsePayload]("Activate", res, 0); err != nil {
		if res.resent && errors.Is(err, ErrPermission) {
			// Our own first attempt may have activated it.
			if st, serr := c.State(ctx, id); serr == nil && st == StateActive {
				return nil
			}
		}
		return err
	}
	return nil
}

// GetKey fetches the raw 32-byte AES key id. Only an Active key is returned:
// Get of a revoked key still succeeds on PyKMIP, so the state is read in the
// same request message and anything else is ErrNotUsable, which tells the
// keyring to evict and fail closed.
//
// The caller owns the returned slice and should clear it when done.
func (c *Client) GetKey(ctx context.Context, id string) ([]byte, error) {
	if id == "" {
		return nil, errors.New("kmipclient: GetKey: empty key id")
	}
	res, err := c.call(ctx, "Get", true,
		&payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}},
		&payloads.GetRequestPayload{UniqueIdentifier: id, KeyFormatType: kmip.KeyFormatTypeRaw},
	)
	if err != nil {
		return nil, err
	}
	ga, err := item[*payloads.GetAttributesResponsePayload]("Get", res, 0)
	if err != nil {
		return nil, err
	}
	gr, err := item[*payloads.GetResponsePayload]("Get", res, 1)
	if err != nil {
		return nil, err
	}
	raw, kerr := symmetricKey(gr)
	key := slices.Clone(raw)
	clear(raw) // the decoded reply would otherwise keep a copy until GC
	if kerr != nil {
		clear(key)
		return nil, &Error{Op: "Get", Endpoint: res.endpoint, Err: ErrProtocol, Cause: kerr}
	}
	st, err := stateFrom(ga)
	if err != nil {
		clear(key)
		return nil, &Error{Op: "Get", Endpoint: res.endpoint, Err: ErrProtocol, Cause: err}
	}
	if !st.Usable() {
		clear(key)
		return nil, &Error{Op: "Get", Endpoint: res.endpoint, Err: ErrNotUsable, Cause: fmt.Errorf("key %s is %s", id, st)}
	}
	return key, nil
}

// symmetricKey extracts and checks the key material without ever putting
// it in an error.
func symmetricKey(gr *payloads.GetResponsePayload) ([]byte, error) {
	if gr.ObjectType != kmip.ObjectTypeSymmetricKey {
		return nil, fmt.Errorf("object is not a symmetric key (type %d)", gr.ObjectType)
	}
	sk, ok := gr.Object.(*kmip.SymmetricKey)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T", gr.Object)
	}
	if alg := sk.KeyBlock.CryptographicAlgorithm; alg != 0 && alg != kmip.CryptographicAlgorithmAES {
		return nil, fmt.Errorf("key algorithm %d is not AES", alg)
	}
	raw, err := sk.KeyMaterial()
	if err != nil {
		return nil, fmt.Errorf("read key material: %w", err)
	}
	if len(raw) != KEKSize {
		return raw, fmt.Errorf("key is %d bytes, want %d", len(raw), KEKSize)
	}
	return raw, nil
}

func stateFrom(ga *payloads.GetAttributesResponsePayload) (State, error) {
	for _, a := range ga.Attribute {
		if a.AttributeName != kmip.AttributeNameState {
			continue
		}
		if s, ok := a.AttributeValue.(kmip.State); ok {
			return stateOf(s), nil
		}
		return StateUnknown, fmt.Errorf("state attribute has type %T", a.AttributeValue)
	}
	return StateUnknown, errors.New("no state attribute in reply")
}

// State returns the lifecycle state of key id, so the keyring can confirm a
// revoke and the CLI can show it.
func (c *Client) State(ctx context.Context, id string) (State, error) {
	st, _, err := c.StateAt(ctx, id)
	return st, err
}

// StateAt is State plus the endpoint that answered: which member of the
// cluster serves the key now (vm list, key list), not the address a policy
// recorded when the key was created. On a failure the endpoint is in the
// *Error.
func (c *Client) StateAt(ctx context.Context, id string) (State, string, error) {
	if id == "" {
		return StateUnknown, "", errors.New("kmipclient: State: empty key id")
	}
	res, err := c.call(ctx, "GetAttributes", true,
		&payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
	if err != nil {
		return StateUnknown, "", err
	}
	ga, err := item[*payloads.GetAttributesResponsePayload]("GetAttributes", res, 0)
	if err != nil {
		return StateUnknown, res.endpoint, err
	}
	st, err := stateFrom(ga)
	if err != nil {
		return StateUnknown, res.endpoint, &Error{Op: "GetAttributes", Endpoint: res.endpoint, Err: ErrProtocol, Cause: err}
	}
	return st, res.endpoint, nil
}

// Locate returns the ids of the keys named name that this client may see
// (none is not an error). cryptds names KEKs per datastore and VM, so this
// finds a VM's key after losing its id, or a key a failed Create may have
// left behind.
func (c *Client) Locate(ctx context.Context, name string) ([]string, error) {
	if name == "" {
		return nil, errors.New("kmipclient: Locate: empty key name")
	}
	res, err := c.call(ctx, "Locate", true, &payloads.LocateRequestPayload{
		Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{
			NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}}},
	})
	if err != nil {
		return nil, err
	}
	lr, err := item[*payloads.LocateResponsePayload]("Locate", res, 0)
	if err != nil {
		return nil, err
	}
	return slices.Clone(lr.UniqueIdentifier), nil
}

// Revoke deactivates key id (reason: cessation of operation), the first
// half of a shred: GetKey fails with ErrNotUsable from then on. Revoking a
// key that is not Active fails with ErrNotUsable.
func (c *Client) Revoke(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("kmipclient: Revoke: empty key id")
	}
	res, err := c.call(ctx, "Revoke", true, &payloads.RevokeRequestPayload{
		UniqueIdentifier: id,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation},
	})
	if err != nil {
		return err
	}
	if _, err := item[*payloads.RevokeResponsePayload]("Revoke", res, 0); err != nil {
		if res.resent && errors.Is(err, ErrNotUsable) {
			// Our own earlier attempt may have revoked it already.
			if st, serr := c.State(ctx, id); serr == nil && (st == StateDeactivated || st == StateCompromised) {
				return nil
			}
		}
		return err
	}
	c.s.log.Info("kmip key revoked", "id", id, "endpoint", res.endpoint)
	return nil
}

// Destroy deletes key id from the KMS, after which every copy of data under
// it is unrecoverable. The server refuses to destroy an Active key
// (ErrPermission, as PyKMIP answers): Revoke first.
func (c *Client) Destroy(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("kmipclient: Destroy: empty key id")
	}
	res, err := c.call(ctx, "Destroy", true, &payloads.DestroyRequestPayload{UniqueIdentifier: id})
	if err != nil {
		return err
	}
	if _, err := item[*payloads.DestroyResponsePayload]("Destroy", res, 0); err != nil {
		if res.resent && errors.Is(err, ErrNotFound) {
			return nil // our own earlier attempt destroyed it
		}
		return err
	}
	c.s.log.Info("kmip key destroyed", "id", id, "endpoint", res.endpoint)
	return nil
}

// requiredOps are the operations this package sends.
var requiredOps = []kmip.Operation{
	kmip.OperationCreate, kmip.OperationActivate, kmip.OperationGet, kmip.OperationGetAttributes,
	kmip.OperationLocate, kmip.OperationRevoke, kmip.OperationDestroy,
}

// Ping checks that a KMS answers and supports what cryptds needs (Query), and
// returns the KMIP version negotiated with it, for `cryptds kms ping` and
// health checks.
func (c *Client) Ping(ctx context.Context) (Version, error) {
	res, err := c.call(ctx, "Query", true, &payloads.QueryRequestPayload{
		QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations, kmip.QueryFunctionObjects},
	})
	if err != nil {
		return Version{}, err
	}
	qr, err := item[*payloads.QueryResponsePayload]("Query", res, 0)
	if err != nil {
		return Version{}, err
	}
	if len(qr.Operations) > 0 { // an empty list means "not telling", not "none"
		var missing []string
		for _, op := range requiredOps {
			if !slices.Contains(qr.Operations, op) {
				missing = append(missing, ttlv.EnumStr(op))
			}
		}
		if len(missing) > 0 {
			return res.version, &Error{Op: "Query", Endpoint: res.endpoint, Err: ErrProtocol,
				Cause: fmt.Errorf("server lacks operations %v", missing)}
		}
	}
	return res.version, nil
}
