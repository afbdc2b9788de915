package main

import (
	"context"
	"errors"
	"io/fs"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// stage is the stage value. It is safe for concurrent use.
type stage struct {
	cfg  Config
	log  hclog.Logger
	keys *keyring
}

var _ sdk.Router = (*stage)(nil)

func newStage(cfg Config, log hclog.Logger) (*stage, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	kr, err := openKeyring(cfg.KeysDir)
	if err != nil {
		return nil, sdk.FieldErrorf("keys_dir", "%v", err)
	}
	return &stage{cfg: cfg, log: log, keys: kr}, nil
}

// Route gives each recipient its own copy, encrypted to that recipient's
// keys only, as a PGP/MIME message (RFC 3156 §4) that replaces the whole
// message for that delivery; every route goes to the next deliverer.
// One copy per recipient, rather than one copy encrypted to all: no copy
// names another recipient's key (a Bcc stays hidden), and a recipient
// without a key cannot decide how the others' copies are stored.
//
// A message that is encrypted already (see alreadyEncrypted) goes to
// every recipient unchanged. A recipient without a usable key gets
// missing_key:
//   - clear: its copy is the message unchanged (the recipients in one
//     route sharing the stored message);
//   - reject: it is in no route, which the core counts as a permanent
//     failure of that recipient; if no recipient has a key the whole
//     message fails permanently, 550 5.7.0;
//   - hold: the whole message stays queued, temporary 451 4.7.0, and the
//     core calls Route again (about once a second for a routing stage)
//     until every recipient has a key or queue.max_lifetime passes. Nothing
//     leaves unencrypted, and the recipients with keys wait too, so a
//     message is never stored half encrypted and half held.
//
// A header section that cannot be parsed is a permanent 554 5.6.0 (it
// cannot become PGP/MIME, and must not be stored in clear); an encryption
// failure is temporary 451 4.3.0. Errors never name an address.
func (s *stage) Route(_ context.Context, m *sdk.Message) ([]sdk.Route, error) {
	var rcpts []string
	seen := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		if !seen[r] {
			seen[r] = true
			rcpts = append(rcpts, r)
		}
	}
	sp, err := splitHeader(m.Header)
	if err != nil {
		s.log.Debug("header section does not parse", "error", err)
		return nil, sdk.Permanent(554, "6.0", "openpgp: the header section cannot be parsed, so it cannot be encrypted")
	}
	if alreadyEncrypted(sp, m.Body) {
		s.log.Debug("message is encrypted already; passed unchanged")
		return []sdk.Route{{RcptTo: rcpts}}, nil
	}
	// Keys first: a held or refused message costs no encryption (a held
	// one comes back about once a second).
	var keyed []string
	keysOf := map[string][]*openpgp.Entity{}
	var keyless []string
	for _, r := range rcpts {
		keys, err := s.keys.lookup(r)
		if err != nil {
			if !errors.Is(err, errNoKey) {
				s.log.Warn("[OPENPGP] a key file is unusable; the recipient counts as without a key (file name at debug level)", "reason", keyErrReason(err))
			}
			s.log.Debug("no usable key", "rcpt", r, "error", err)
			keyless = append(keyless, r)
			continue
		}
		keyed = append(keyed, r)
		keysOf[r] = keys
	}
	if len(keyless) > 0 {
		switch s.cfg.MissingKey {
		case policyHold:
			return nil, sdk.Temporary(451, "7.0", "openpgp: %d of %d recipients have no OpenPGP key yet; message held", len(keyless), len(rcpts))
		case policyReject:
			if len(keyed) == 0 {
				return nil, sdk.Permanent(550, "7.0", "openpgp: no recipient has an OpenPGP key")
			}
			s.log.Info("[OPENPGP] recipients without a key refused", "recipients", len(keyless))
		case policyClear:
			s.log.Info("[OPENPGP] recipients without a key get the message unencrypted", "recipients", len(keyless))
		}
	}
	var routes []sdk.Route
	for _, r := range keyed {
		enc, err := pgpMIME(sp, m.Body, keysOf[r], s.cfg.ProtectSubject)
		if err != nil {
			s.log.Debug("encryption failed", "rcpt", r, "error", err)
			return nil, sdk.Temporary(451, "3.0", "openpgp: encryption failed")
		}
		routes = append(routes, sdk.Route{RcptTo: []string{r}, Body: enc})
	}
	if len(keyless) > 0 && s.cfg.MissingKey == policyClear {
		routes = append(routes, sdk.Route{RcptTo: keyless})
	}
	return routes, nil
}

// keyErrReason is err without the file name, which is an address.
func keyErrReason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}
