package main

import (
	"github.com/mixmta/mixmta/sdk"
)

// Policies for a recipient without a usable key.
const (
	policyClear  = "clear"  // deliver that recipient's copy unencrypted
	policyReject = "reject" // fail that recipient permanently
	policyHold   = "hold"   // keep the whole message queued until a key appears
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	KeysDir        string `json:"keys_dir" required:"true" doc:"directory of public keys, one file per recipient: <address>.asc (armored or binary), address in lower case"`
	MissingKey     string `json:"missing_key" doc:"recipient without a usable key: hold (keep the message queued until a key appears), reject (permanent failure for that recipient) or clear (deliver unencrypted)"`
	ProtectSubject bool   `json:"protect_subject" doc:"move the Subject (and copies of From, To, Cc, Date...) into the encrypted part; the outer Subject becomes [...]"`
}

// Validate checks every key; errors name the key.
func (c *Config) Validate() error {
	if c.KeysDir == "" {
		return sdk.FieldErrorf("keys_dir", "required")
	}
	switch c.MissingKey {
	case policyClear, policyReject, policyHold:
	default:
		return sdk.FieldErrorf("missing_key", "must be hold, reject or clear, got %q", c.MissingKey)
	}
	return nil
}
