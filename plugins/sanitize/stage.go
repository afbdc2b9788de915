package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// stage is the sanitize Transformer: it replaces the header section and the
// envelope MAIL FROM and never sees the body (Needs = sdk.NeedHeader).
type stage struct {
	s      *Sanitizer
	sender string
	log    hclog.Logger
	now    func() time.Time
}

var _ sdk.Transformer = (*stage)(nil)

func newStage(c Config, env sdk.Env) (any, error) {
	log := env.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &stage{s: NewSanitizer(c), sender: c.EnvelopeSender, log: log, now: time.Now}, nil
}

// Transform returns the sanitized header section and the configured
// envelope sender. It fails (temporary, 451 4.3.0) only when the random
// source fails; a repeat after a crash draws a new Message-ID and Date,
// which is harmless because the earlier output was never delivered.
func (st *stage) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	r, err := st.s.Sanitize(m.Header, st.now())
	if err != nil {
		return nil, sdk.Temporary(451, "3.0", "sanitize: %v", err)
	}
	// Counts only: names are the sender's business, values even more so.
	st.log.Info(fmt.Sprintf("[SANITIZE] dropped %d fields", r.Removed()),
		"kept", r.Kept, "not_allowed", r.Dropped, "duplicates", r.Duplicates, "malformed", r.Malformed)
	if st.log.IsDebug() {
		st.log.Debug("[SANITIZE] dropped field names", "id", m.ID, "names", r.DroppedNames)
	}
	sender := st.sender
	return &sdk.Change{Header: r.Header, MailFrom: &sender}, nil
}
