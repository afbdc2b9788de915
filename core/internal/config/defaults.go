package config

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/sdk"
)

// Defaults, as documented on the fields in config.go and in
// docs/configuration.md.
// minPacketSize is the smallest mix.packet_size accepted (1 KiB): a
// smaller packet leaves a Sphinx header of a few hops almost no payload.
const minPacketSize = 1024

const (
	DefaultHostname  = "mixmta.invalid"
	DefaultDataDir   = "./var/data"
	DefaultPluginDir = "./bin"
	DefaultLogLevel  = "info"

	DefaultMaxMessageBytes = 25 << 20 // 25 MiB
	DefaultMaxRecipients   = 100      // RFC 5321 §4.5.3.1.8 minimum
	DefaultMaxLineLength   = 4000     // bytes incl. CRLF; go-smtp's 2000 is too small for real senders
	DefaultMaxHeaderBytes  = 1 << 20  // 1 MiB
	DefaultMaxHeaderFields = 1000
	DefaultMaxSessions     = 100

	// MinLineLength is RFC 5321 §4.5.3.1.6's text line limit, CRLF
	// included: a server must accept lines this long.
	MinLineLength = 1000
)

// SetDefaults fills every unset value with its default (see the field
// docs in config.go). A value is unset when its key was absent or written
// with no value; for a Config built in Go rather than parsed, when it is
// the zero value. Strings are unset when empty. SetDefaults is idempotent;
// Parse calls it.
func (c *Config) SetDefaults() {
	str(&c.Hostname, DefaultHostname)
	str(&c.DataDir, DefaultDataDir)
	str(&c.PluginDir, DefaultPluginDir)
	str(&c.Log.Level, DefaultLogLevel)
	c.dur(&c.Log.StatsInterval, "log.stats_interval", time.Minute)

	c.dur(&c.Queue.MaxLifetime, "queue.max_lifetime", 5*24*time.Hour)
	c.dur(&c.Queue.GCInterval, "queue.gc_interval", 5*time.Minute)
	num(c, &c.Queue.Workers, "queue.workers", pipeline.DefaultWorkers)
	num(c, &c.Queue.FreeSpaceReserve, "queue.free_space_reserve", 256<<20)

	c.dur(&c.Scheduler.Window, "scheduler.window", time.Second)
	num(c, &c.Scheduler.SendFraction, "scheduler.send_fraction", 1)
	num(c, &c.Scheduler.Concurrency, "scheduler.concurrency", 16)

	num(c, &c.Retry.MaxAttempts, "retry.max_attempts", 9)
	c.dur(&c.Retry.Base, "retry.base", 2*time.Second)
	num(c, &c.Retry.Factor, "retry.factor", 2)
	c.dur(&c.Retry.Max, "retry.max", time.Hour)
	num(c, &c.Retry.Jitter, "retry.jitter", 0.2)

	if m := c.Mix; m != nil {
		str(&m.KeysDir, filepath.Join(c.DataDir, "keys"))
		num(c, &m.PacketSize, "mix.packet_size", transport.DefaultPacketSize)
		c.dur(&m.Epoch, "mix.epoch", time.Hour)
		c.dur(&m.Grace, "mix.grace", 10*time.Minute)
		num(c, &m.KeysAhead, "mix.keys_ahead", 1)
		str(&m.SphinxFormat, "x25519")
		if d := m.Directory; d != nil {
			m.KeysAhead = max(m.KeysAhead, DirectoryKeysAhead)
			str(&d.AuthorityKey, filepath.Join(m.KeysDir, "authority.key"))
		}
		c.dur(&m.ProbeInterval, "mix.probe_interval", 30*time.Second)
		num(c, &m.SendRate, "mix.send_rate", 0.2)
		str(&m.HopDelay.Name, "hop-delay")
	}

	c.torDefaults()
	c.coverDefaults()

	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d].", i)
		str(&l.Name, l.Address)
		num(c, &l.MaxMessageBytes, p+"max_message_bytes", DefaultMaxMessageBytes)
		num(c, &l.MaxRecipients, p+"max_recipients", DefaultMaxRecipients)
		num(c, &l.MaxLineLength, p+"max_line_length", DefaultMaxLineLength)
		num(c, &l.MaxHeaderBytes, p+"max_header_bytes", DefaultMaxHeaderBytes)
		num(c, &l.MaxHeaderFields, p+"max_header_fields", DefaultMaxHeaderFields)
		c.dur(&l.ReadTimeout, p+"read_timeout", 5*time.Minute)
		c.dur(&l.WriteTimeout, p+"write_timeout", time.Minute)
		num(c, &l.MaxSessions, p+"max_sessions", DefaultMaxSessions)
		num(c, &l.MaxSessionsPerClient, p+"max_sessions_per_client", 50)
		c.dur(&l.MaxSessionTime, p+"max_session_time", 10*time.Minute)
		num(c, &l.MinDataRate, p+"min_data_rate", 500)
		num(c, &l.MaxJunkCommands, p+"max_junk_commands", 100)
		num(c, &l.MaxErrors, p+"max_errors", 20)
		if rl := l.Relay.RateLimit; rl != nil {
			num(c, &rl.Burst, p+"relay.rate_limit.burst", rl.Messages)
		}
	}
}

func str(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

// isSet reports whether the key at path was written with a value.
func (c *Config) isSet(path string) bool {
	_, ok := c.lines[path]
	return ok && !c.unset[path]
}

func (c *Config) dur(d *sdk.Duration, path string, def time.Duration) {
	if *d == 0 && !c.isSet(path) {
		*d = sdk.Duration(def)
	}
}

func num[T int | int64 | float64](c *Config, x *T, path string, def T) {
	if *x == 0 && !c.isSet(path) {
		*x = def
	}
}
