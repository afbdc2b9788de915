package main

import (
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	Path           string   `json:"path" required:"true" doc:"root directory of the Maildirs (created 0700 if missing)"`
	Layout         string   `json:"layout" doc:"recipient: PATH/<domain>/<local part>/, domain: PATH/<domain>/, single: PATH/"`
	LocalDomains   []string `json:"local_domains" doc:"domains delivered here; others are refused with 550 5.1.2 (empty: every domain)"`
	AddDeliveredTo bool     `json:"add_delivered_to" doc:"prepend a Delivered-To: header with the recipient (one file per recipient then)"`
}

// Validate checks every key; errors name the key.
func (c *Config) Validate() error {
	if c.Path == "" {
		return sdk.FieldErrorf("path", "required")
	}
	switch c.Layout {
	case layoutRecipient, layoutDomain, layoutSingle:
	default:
		return sdk.FieldErrorf("layout", "must be recipient, domain or single, got %q", c.Layout)
	}
	for _, d := range c.LocalDomains {
		if _, err := address.ToASCII(d); err != nil {
			return sdk.FieldErrorf("local_domains", "%q: %v", d, err)
		}
	}
	return nil
}
