package main

import (
	"context"
	"crypto/rand"
	"io"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// Stage is the sphinx plugin's stage value: the entry's Router (router.go)
// and the mix node's Mixer (mixer.go). It keeps no state besides the last
// MixState the core pushed and the private keys it lists (keyring); it is
// safe for concurrent use.
type Stage struct {
	pf   packetFormat // the packet format and geometry
	hops int
	// maxMessage bounds header + body at the entry (bytes); maxInner and
	// maxFragments are what it implies for the exit.
	maxMessage   int64
	maxInner     int64
	fragData     int // message bytes per fragment: PayloadSize - 25
	maxFragments int
	rand         io.Reader
	now          func() time.Time
	log          hclog.Logger
	state        atomic.Pointer[mixState]
	ring         keyring

	// newsPrefix: recipients with this local-part prefix need an exit with
	// the mail2news capability ("" = none).
	newsPrefix string
}

// Interface guards: the kinds main.go declares.
var (
	_ sdk.Router = (*Stage)(nil)
	_ sdk.Mixer  = (*Stage)(nil)
)

// newStage builds the stage from a validated config, with crypto/rand and
// the wall clock.
func newStage(c Config, env sdk.Env) (any, error) {
	return newStageWith(c, rand.Reader, time.Now, env.Logger), nil
}

// newStageWith builds the stage with injected randomness and clock (tests).
// c must have passed Validate.
func newStageWith(c Config, r io.Reader, now func() time.Time, log hclog.Logger) *Stage {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	f := c.format()
	s := &Stage{pf: f, hops: c.Hops, maxMessage: c.MaxMessageBytes, maxInner: maxInnerSize(c.MaxMessageBytes),
		fragData: f.payloadSize() - fragmentHeaderSize, newsPrefix: c.Mail2NewsLocalPart, rand: r, now: now, log: log}
	s.maxFragments = int((s.maxInner + int64(s.fragData) - 1) / int64(s.fragData))
	return s
}

// SetMixState replaces the keys and the directory (see newMixState for what
// is checked). On error the previous state stays in force and the error is
// permanent: the core sent a state this node cannot use.
func (s *Stage) SetMixState(_ context.Context, ms sdk.MixState) error {
	st, err := newMixState(ms, s.pf)
	if err == nil {
		err = s.ring.update(ms.KeyDir, ms.Keys, s.pf.kind)
	}
	if err != nil {
		return sdk.Permanent(554, "3.5", "sphinx: mix state rejected: %v", err)
	}
	s.state.Store(st)
	exits := 0
	for _, c := range st.candidates {
		if c.exit {
			exits++
		}
	}
	s.log.Debug("mix state", "epoch", st.epoch, "own_keys", len(st.keys), "usable_nodes", len(st.candidates), "exits", exits, "self_exit", st.selfExit)
	return nil
}

// loadState returns the current state, or a temporary error before the
// core's first SetMixState (it always sends one after Configure and after a
// restart, so the item is retried with keys).
func (s *Stage) loadState() (*mixState, error) {
	st := s.state.Load()
	if st == nil {
		return nil, sdk.Temporary(451, "3.0", "sphinx: no mix state yet (keys and directory not received)")
	}
	return st, nil
}
