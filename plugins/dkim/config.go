package main

import (
	"strings"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	Domain   string   `json:"domain" required:"true" doc:"signing domain (d=); the key is published at SELECTOR._domainkey.DOMAIN"`
	Selector string   `json:"selector" required:"true" doc:"selector (s=)"`
	KeyFile  string   `json:"key_file" required:"true" doc:"PEM private key (PKCS#8 Ed25519, or PKCS#1/PKCS#8 RSA >= 2048 bits); mode 0600 or stricter"`
	Headers  []string `json:"headers" doc:"header fields signed (h=), each instance present; must include From"`
	Oversign []string `json:"oversign" doc:"fields of headers signed once more than present, so none can be added"`
}

// Validate checks every key; errors name the key.
func (c *Config) Validate() error {
	if !isDomain(c.Domain) {
		return sdk.FieldErrorf("domain", "want a domain name like example.org, got %q", c.Domain)
	}
	if !isDomain(c.Selector) {
		return sdk.FieldErrorf("selector", "want one or more DNS labels, got %q", c.Selector)
	}
	if c.KeyFile == "" {
		return sdk.FieldErrorf("key_file", "required")
	}
	from := false
	listed := map[string]bool{}
	for _, h := range c.Headers {
		if !isFieldName(h) {
			return sdk.FieldErrorf("headers", "%q is not a header field name", h)
		}
		if strings.EqualFold(h, "DKIM-Signature") {
			return sdk.FieldErrorf("headers", "DKIM-Signature cannot be signed")
		}
		from = from || strings.EqualFold(h, "From")
		listed[strings.ToLower(h)] = true
	}
	if !from {
		return sdk.FieldErrorf("headers", "must include From (RFC 6376 §5.4)")
	}
	for _, h := range c.Oversign {
		if !listed[strings.ToLower(h)] {
			return sdk.FieldErrorf("oversign", "%q is not in headers", h)
		}
	}
	return nil
}

// isDomain reports whether s is dot-separated LDH labels of 1-63 octets.
func isDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// isFieldName reports whether s is an RFC 5322 §3.6.8 field name.
func isFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 || s[i] == ':' {
			return false
		}
	}
	return true
}
