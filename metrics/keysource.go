package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/cryptds/cryptds/keyring"
)

// instrumented wraps a keyring.KeySource to time its requests and count its
// errors per endpoint.
type instrumented struct {
	keyring.KeySource
	e          *Exporter
	kms        string
	endpointOf func(error) string
}

// InstrumentKeySource returns src with its GetKey and CreateKEK calls
// measured. A client with failover does not say which endpoint answered a
// success, so durations are labelled with the whole cluster
// (src.Endpoints()); errors are labelled with endpointOf(err) when it
// returns non-empty (the KMIP client's errors name the endpoint that
// failed), else with the cluster.
func (e *Exporter) InstrumentKeySource(src keyring.KeySource, endpointOf func(error) string) keyring.KeySource {
	return &instrumented{KeySource: src, e: e, kms: strings.Join(src.Endpoints(), ","), endpointOf: endpointOf}
}

func (s *instrumented) done(op string, t0 time.Time, err error) {
	s.e.kmsDur.WithLabelValues(s.kms, op).Observe(time.Since(t0).Seconds())
	if err == nil {
		return
	}
	ep := ""
	if s.endpointOf != nil {
		ep = s.endpointOf(err)
	}
	if ep == "" {
		ep = s.kms
	}
	s.e.kmsErr.WithLabelValues(ep, op).Inc()
}

// GetKey times the wrapped GetKey.
func (s *instrumented) GetKey(ctx context.Context, id string) ([]byte, error) {
	t0 := time.Now()
	k, err := s.KeySource.GetKey(ctx, id)
	s.done("get_key", t0, err)
	return k, err
}

// CreateKEK times the wrapped CreateKEK.
func (s *instrumented) CreateKEK(ctx context.Context, name string) (string, error) {
	t0 := time.Now()
	id, err := s.KeySource.CreateKEK(ctx, name)
	s.done("create_kek", t0, err)
	return id, err
}
