package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
	"github.com/mixmta/mixmta/sdk/onion"
)

// Cover makes the node originate cover messages (docs/tor.md, "Cover
// messages"): dummy mail addressed to a cover sink that discards it, put
// into the queue at a Poisson rate and run through the whole pipeline like
// a message received by SMTP (delay, pool, sanitize, pad, the same
// deliverer, the same Tor isolation), so an observer of the node's
// outbound traffic sees one more delivery of a padded size class, not a
// marked dummy.
type Cover struct {
	// Interval is the mean time between cover messages; the gaps are
	// exponentially distributed (a Poisson process). Required, > 0.
	Interval sdk.Duration `yaml:"interval"`
	// To lists the cover sinks (mail addresses, typically at an onion
	// service that discards what it gets); each cover message goes to one
	// of them at random. Required.
	To []string `yaml:"to"`
	// From is the cover messages' MAIL FROM. Default "nobody@HOSTNAME".
	From string `yaml:"from"`
	// MinSize and MaxSize bound the body size in bytes, drawn uniformly;
	// set them to span the size classes of the node's real mail (with
	// padding, the class is what an observer sees). Defaults 512 and
	// 16384.
	MinSize int `yaml:"min_size"`
	MaxSize int `yaml:"max_size"`
}

func (c *Config) coverDefaults() {
	v := c.Cover
	if v == nil {
		return
	}
	str(&v.From, "nobody@"+c.Hostname)
	num(c, &v.MinSize, "cover.min_size", 512)
	num(c, &v.MaxSize, "cover.max_size", 16384)
}

func (c *Config) validateCover(bad func(string, string, ...any), positive func(string, sdk.Duration)) {
	v := c.Cover
	if v == nil {
		return
	}
	positive("cover.interval", v.Interval)
	if v.Interval > 0 && v.Interval.D() < 10*time.Millisecond {
		bad("cover.interval", "must be at least 10ms, got %s", fmtDur(v.Interval))
	}
	if len(v.To) == 0 {
		bad("cover", "to is required: the cover sink addresses")
	}
	for i, a := range append([]string{v.From}, v.To...) {
		key := "cover.from"
		if i > 0 {
			key = fmt.Sprintf("cover.to[%d]", i-1)
		}
		local, domain, ok := strings.Cut(a, "@")
		if !ok || local == "" || domain == "" || strings.ContainsAny(a, " <>\r\n\t") {
			bad(key, "%q is not a mail address (local@domain)", a)
			continue
		}
		// A mistyped or v2 sink onion is never reached: every cover
		// message would fail at its descriptor lookup, a pattern real
		// mail (refused at RCPT for such an address) never makes.
		if m, err := address.Parse(a, false); err != nil {
			bad(key, "%q is not a mail address: %v", a, err)
		} else if d := m.ASCIIDomain(); onion.IsOnion(d) {
			if _, _, err := onion.Parse(d); err != nil {
				bad(key, "%q: %v", a, err)
			}
		}
	}
	if v.MinSize < 0 {
		bad("cover.min_size", "must be at least 0, got %d", v.MinSize)
	}
	if v.MaxSize < v.MinSize || v.MaxSize > 64<<20 {
		bad("cover.max_size", "must be between min_size (%d) and 64 MiB, got %d", v.MinSize, v.MaxSize)
	}
}
