package devkms

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// engine implements the KMIP operations on top of the store. Result reasons
// follow PyKMIP 0.10 (Debian's python3-pykmip) so the client suite can run against
// both servers.
type engine struct {
	store    *store
	log      *slog.Logger
	now      func() time.Time
	versions []kmip.ProtocolVersion // nil: the library's default
}

// operations is what the dev KMS answers; everything else gets
// OperationNotSupported from the library.
var operations = []kmip.Operation{
	kmip.OperationCreate, kmip.OperationActivate, kmip.OperationGet, kmip.OperationGetAttributes,
	kmip.OperationLocate, kmip.OperationRevoke, kmip.OperationDestroy,
	kmip.OperationQuery, kmip.OperationDiscoverVersions,
}

// routes builds the batch executor. SetSupportedProtocolVersions is
// deliberately not called: in v0.8.1 it sorts ascending and clients would
// negotiate KMIP 1.0 (TestNegotiation); the default list (1.4 down to 1.0,
// newest first) is right.
func (e *engine) routes() *kmipserver.BatchExecutor {
	x := kmipserver.NewBatchExecutor()
	x.Route(kmip.OperationCreate, kmipserver.HandleFunc(e.create))
	x.Route(kmip.OperationActivate, kmipserver.HandleFunc(e.activate))
	x.Route(kmip.OperationGet, kmipserver.HandleFunc(e.get))
	x.Route(kmip.OperationGetAttributes, kmipserver.HandleFunc(e.getAttributes))
	x.Route(kmip.OperationLocate, kmipserver.HandleFunc(e.locate))
	x.Route(kmip.OperationRevoke, kmipserver.HandleFunc(e.revoke))
	x.Route(kmip.OperationDestroy, kmipserver.HandleFunc(e.destroy))
	x.Route(kmip.OperationQuery, kmipserver.HandleFunc(e.query))
	if e.versions != nil {
		x.Route(kmip.OperationDiscoverVersions, kmipserver.HandleFunc(e.discoverVersions))
	}
	return x
}

// discoverVersions answers with the configured versions the client also
// offers, in the server's order of preference.
func (e *engine) discoverVersions(_ context.Context, req *payloads.DiscoverVersionsRequestPayload) (*payloads.DiscoverVersionsResponsePayload, error) {
	resp := &payloads.DiscoverVersionsResponsePayload{}
	for _, v := range e.versions {
		if len(req.ProtocolVersion) == 0 || slices.Contains(req.ProtocolVersion, v) {
			resp.ProtocolVersion = append(resp.ProtocolVersion, v)
		}
	}
	return resp, nil
}

// owner is the client certificate's CN: the only identity the dev KMS knows.
func owner(ctx context.Context) (string, error) {
	certs := kmipserver.PeerCertificates(ctx)
	if len(certs) == 0 || certs[0].Subject.CommonName == "" {
		return "", kmipserver.Errorf(kmip.ResultReasonAuthenticationNotSuccessful, "client certificate has no common name")
	}
	return certs[0].Subject.CommonName, nil
}

// lookup finds id for the caller. Another owner's object is PermissionDenied,
// as on PyKMIP.
func (e *engine) lookup(ctx context.Context, reqID string) (*object, string, error) {
	who, err := owner(ctx)
	if err != nil {
		return nil, "", err
	}
	id, err := kmipserver.GetIdOrPlaceholder(ctx, reqID)
	if err != nil {
		return nil, "", kmipserver.Errorf(kmip.ResultReasonItemNotFound, "no unique identifier and no ID placeholder")
	}
	o, ok := e.store.get(id)
	if !ok {
		return nil, "", kmipserver.Errorf(kmip.ResultReasonItemNotFound, "object %s not found", id)
	}
	if o.Owner != who {
		return nil, "", kmipserver.Errorf(kmip.ResultReasonPermissionDenied, "could not locate object %s", id)
	}
	return o, who, nil
}

// mutate re-checks ownership under the store lock and applies fn.
func (e *engine) mutate(id, who string, fn func(o *object) (*object, error)) error {
	return e.store.update(id, func(o *object) (*object, error) {
		if o == nil {
			return nil, kmipserver.Errorf(kmip.ResultReasonItemNotFound, "object %s not found", id)
		}
		if o.Owner != who {
			return nil, kmipserver.Errorf(kmip.ResultReasonPermissionDenied, "could not locate object %s", id)
		}
		return fn(o)
	})
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

func (e *engine) create(ctx context.Context, req *payloads.CreateRequestPayload) (*payloads.CreateResponsePayload, error) {
	who, err := owner(ctx)
	if err != nil {
		return nil, err
	}
	if req.ObjectType != kmip.ObjectTypeSymmetricKey {
		return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "the dev KMS creates only symmetric keys")
	}
	if len(req.TemplateAttribute.Name) > 0 {
		return nil, kmipserver.Errorf(kmip.ResultReasonItemNotFound, "locating templates by name is not supported")
	}
	now := e.now()
	o := &object{Owner: who, State: uint32(kmip.StatePreActive), Created: now}
	var haveAlg, haveLen, haveMask bool
	for _, a := range req.TemplateAttribute.Attribute {
		switch a.AttributeName {
		case kmip.AttributeNameCryptographicAlgorithm:
			v, ok := a.AttributeValue.(kmip.CryptographicAlgorithm)
			if !ok || v != kmip.CryptographicAlgorithmAES {
				return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "the dev KMS creates only AES keys")
			}
			o.Algorithm, haveAlg = uint32(v), true
		case kmip.AttributeNameCryptographicLength:
			v, ok := a.AttributeValue.(int32)
			if !ok || (v != 128 && v != 192 && v != 256) {
				return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "invalid AES key length")
			}
			o.Length, haveLen = v, true
		case kmip.AttributeNameCryptographicUsageMask:
			v, ok := a.AttributeValue.(kmip.CryptographicUsageMask)
			if !ok {
				return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "invalid cryptographic usage mask")
			}
			o.UsageMask, haveMask = int32(v), true
		case kmip.AttributeNameName:
			v, ok := a.AttributeValue.(kmip.Name)
			if !ok || v.NameValue == "" {
				return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "invalid name")
			}
			o.Names = append(o.Names, v.NameValue)
		default:
			return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "attribute %q is not supported by the dev KMS", a.AttributeName)
		}
	}
	switch {
	case !haveAlg:
		return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "the cryptographic algorithm must be specified as an attribute")
	case !haveLen:
		return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "the cryptographic length must be specified as an attribute")
	case !haveMask:
		return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "the cryptographic usage mask must be specified as an attribute")
	}
	o.Key = make([]byte, o.Length/8)
	if _, err := rand.Read(o.Key); err != nil {
		return nil, err
	}
	if o.ID, err = newID(); err != nil {
		return nil, err
	}
	if err := e.store.update(o.ID, func(cur *object) (*object, error) {
		if cur != nil {
			return nil, fmt.Errorf("id collision")
		}
		return o, nil
	}); err != nil {
		return nil, err
	}
	kmipserver.SetIdPlaceholder(ctx, o.ID)
	e.log.Info("dev KMS: key created", "id", o.ID, "owner", who, "names", o.Names)
	return &payloads.CreateResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: o.ID}, nil
}

func (e *engine) activate(ctx context.Context, req *payloads.ActivateRequestPayload) (*payloads.ActivateResponsePayload, error) {
	o, who, err := e.lookup(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	err = e.mutate(o.ID, who, func(o *object) (*object, error) {
		if o.State != uint32(kmip.StatePreActive) {
			return nil, kmipserver.Errorf(kmip.ResultReasonPermissionDenied, "the object state is not pre-active and cannot be activated")
		}
		now := e.now()
		o.State, o.Activated = uint32(kmip.StateActive), &now
		return o, nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.ActivateResponsePayload{UniqueIdentifier: o.ID}, nil
}

func (e *engine) get(ctx context.Context, req *payloads.GetRequestPayload) (*payloads.GetResponsePayload, error) {
	o, _, err := e.lookup(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	switch {
	case req.KeyFormatType != 0 && req.KeyFormatType != kmip.KeyFormatTypeRaw:
		return nil, kmipserver.Errorf(kmip.ResultReasonKeyFormatTypeNotSupported, "only the Raw key format is supported")
	case req.KeyCompressionType != 0:
		return nil, kmipserver.Errorf(kmip.ResultReasonKeyCompressionTypeNotSupported, "key compression is not supported")
	case req.KeyWrappingSpecification != nil || req.KeyWrapType != 0:
		return nil, kmipserver.Errorf(kmip.ResultReasonFeatureNotSupported, "key wrapping is not supported by the dev KMS")
	}
	key := o.Key
	return &payloads.GetResponsePayload{
		ObjectType:       kmip.ObjectTypeSymmetricKey,
		UniqueIdentifier: o.ID,
		Object: &kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{
			KeyFormatType:          kmip.KeyFormatTypeRaw,
			KeyValue:               &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &key}}},
			CryptographicAlgorithm: kmip.CryptographicAlgorithm(o.Algorithm),
			CryptographicLength:    o.Length,
		}},
	}, nil
}

// attributes lists o's attributes, restricted to names when given.
func attributes(o *object, names []kmip.AttributeName) []kmip.Attribute {
	all := []kmip.Attribute{
		{AttributeName: kmip.AttributeNameUniqueIdentifier, AttributeValue: o.ID},
		{AttributeName: kmip.AttributeNameObjectType, AttributeValue: kmip.ObjectTypeSymmetricKey},
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithm(o.Algorithm)},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: o.Length},
		{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageMask(o.UsageMask)},
		{AttributeName: kmip.AttributeNameState, AttributeValue: kmip.State(o.State)},
		{AttributeName: kmip.AttributeNameInitialDate, AttributeValue: o.Created},
	}
	for i, n := range o.Names {
		idx := int32(i)
		all = append(all, kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeIndex: &idx,
			AttributeValue: kmip.Name{NameValue: n, NameType: kmip.NameTypeUninterpretedTextString}})
	}
	for _, d := range []struct {
		name kmip.AttributeName
		t    *time.Time
	}{
		{kmip.AttributeNameActivationDate, o.Activated},
		{kmip.AttributeNameDeactivationDate, o.Deactivated},
		{kmip.AttributeNameCompromiseDate, o.Compromised},
	} {
		if d.t != nil {
			all = append(all, kmip.Attribute{AttributeName: d.name, AttributeValue: *d.t})
		}
	}
	if len(names) == 0 {
		return all
	}
	var out []kmip.Attribute
	for _, a := range all {
		if slices.Contains(names, a.AttributeName) {
			out = append(out, a)
		}
	}
	return out
}

func (e *engine) getAttributes(ctx context.Context, req *payloads.GetAttributesRequestPayload) (*payloads.GetAttributesResponsePayload, error) {
	o, _, err := e.lookup(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	return &payloads.GetAttributesResponsePayload{UniqueIdentifier: o.ID, Attribute: attributes(o, req.AttributeName)}, nil
}

// matches reports whether o has every attribute in the Locate filter.
func matches(o *object, filter []kmip.Attribute) (bool, error) {
	for _, f := range filter {
		switch f.AttributeName {
		case kmip.AttributeNameName:
			v, ok := f.AttributeValue.(kmip.Name)
			if !ok || !slices.Contains(o.Names, v.NameValue) {
				return false, nil
			}
		case kmip.AttributeNameObjectType:
			if v, ok := f.AttributeValue.(kmip.ObjectType); !ok || v != kmip.ObjectTypeSymmetricKey {
				return false, nil
			}
		case kmip.AttributeNameState:
			if v, ok := f.AttributeValue.(kmip.State); !ok || uint32(v) != o.State {
				return false, nil
			}
		case kmip.AttributeNameCryptographicAlgorithm:
			if v, ok := f.AttributeValue.(kmip.CryptographicAlgorithm); !ok || uint32(v) != o.Algorithm {
				return false, nil
			}
		case kmip.AttributeNameCryptographicLength:
			if v, ok := f.AttributeValue.(int32); !ok || v != o.Length {
				return false, nil
			}
		default:
			return false, kmipserver.Errorf(kmip.ResultReasonFeatureNotSupported, "the dev KMS cannot locate by %q", f.AttributeName)
		}
	}
	return true, nil
}

func (e *engine) locate(ctx context.Context, req *payloads.LocateRequestPayload) (*payloads.LocateResponsePayload, error) {
	who, err := owner(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := matches(&object{}, req.Attribute); err != nil {
		return nil, err
	}
	found := e.store.list(func(o *object) bool {
		ok, _ := matches(o, req.Attribute)
		return ok && o.Owner == who
	})
	resp := &payloads.LocateResponsePayload{}
	if n := int32(len(found)); kmipserver.GetProtocolVersion(ctx).ProtocolVersionMinor >= 3 {
		resp.LocatedItems = &n
	}
	if off := int(req.OffsetItems); off > 0 {
		found = found[min(off, len(found)):]
	}
	if max := int(req.MaximumItems); max > 0 && len(found) > max {
		found = found[:max]
	}
	for _, o := range found {
		resp.UniqueIdentifier = append(resp.UniqueIdentifier, o.ID)
	}
	return resp, nil
}

func (e *engine) revoke(ctx context.Context, req *payloads.RevokeRequestPayload) (*payloads.RevokeResponsePayload, error) {
	code := req.RevocationReason.RevocationReasonCode
	if code == 0 {
		return nil, kmipserver.Errorf(kmip.ResultReasonInvalidField, "revocation reason code must be specified")
	}
	o, who, err := e.lookup(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	err = e.mutate(o.ID, who, func(o *object) (*object, error) {
		now := e.now()
		if code == kmip.RevocationReasonCodeKeyCompromise {
			o.State, o.Compromised = uint32(kmip.StateCompromised), &now
		} else {
			if o.State != uint32(kmip.StateActive) {
				return nil, kmipserver.Errorf(kmip.ResultReasonIllegalOperation,
					"the object is not active and cannot be revoked with reason other than KeyCompromise")
			}
			o.State, o.Deactivated = uint32(kmip.StateDeactivated), &now
		}
		o.Revocation = uint32(code)
		return o, nil
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("dev KMS: key revoked", "id", o.ID, "owner", who, "reason", ttlv.EnumStr(code))
	return &payloads.RevokeResponsePayload{UniqueIdentifier: o.ID}, nil
}

func (e *engine) destroy(ctx context.Context, req *payloads.DestroyRequestPayload) (*payloads.DestroyResponsePayload, error) {
	o, who, err := e.lookup(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	err = e.mutate(o.ID, who, func(o *object) (*object, error) {
		if o.State == uint32(kmip.StateActive) {
			return nil, kmipserver.Errorf(kmip.ResultReasonPermissionDenied, "object is active and cannot be destroyed")
		}
		clear(o.Key)
		return nil, nil // destroyed objects are deleted, as on PyKMIP: later lookups say ItemNotFound
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("dev KMS: key destroyed", "id", o.ID, "owner", who)
	return &payloads.DestroyResponsePayload{UniqueIdentifier: o.ID}, nil
}

func (e *engine) query(ctx context.Context, req *payloads.QueryRequestPayload) (*payloads.QueryResponsePayload, error) {
	resp := &payloads.QueryResponsePayload{}
	for _, f := range req.QueryFunction {
		switch f {
		case kmip.QueryFunctionOperations:
			resp.Operations = slices.Clone(operations)
		case kmip.QueryFunctionObjects:
			resp.ObjectType = []kmip.ObjectType{kmip.ObjectTypeSymmetricKey}
		case kmip.QueryFunctionServerInformation:
			resp.VendorIdentification = Warning
		}
	}
	return resp, nil
}
