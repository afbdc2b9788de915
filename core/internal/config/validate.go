package config

import (
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/users"

	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
	"github.com/mixmta/mixmta/sdk/onion"
)

// NameRE is the syntax of stage names and plugin names. A plugin name is
// a file name in plugin_dir, so it cannot hold a path separator.
var NameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

var logLevels = []string{"error", "warn", "info", "debug", "trace"}

// Line returns the line of the key at path ("listeners[0].relay.anyone",
// "pipeline[2]"), or of its nearest written parent, or 1.
func (c *Config) Line(path string) int {
	for path != "" {
		if l, ok := c.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 1
}

// validate adds to e every value out of range. It runs after SetDefaults,
// so a zero here was written explicitly.
func (c *Config) validate(e *errs) {
	bad := func(path, format string, args ...any) {
		e.add(c.Line(path), "%s: "+format, append([]any{path}, args...)...)
	}
	positive := func(path string, d sdk.Duration) {
		if d <= 0 {
			bad(path, "must be a positive duration, got %s", fmtDur(d))
		}
	}
	atLeast := func(path string, x, lo int64) {
		if x < lo {
			bad(path, "must be at least %d, got %d", lo, x)
		}
	}

	if err := checkDomain(c.Hostname); err != nil {
		bad("hostname", "%v", err)
	}
	if !slices.Contains(logLevels, c.Log.Level) {
		bad("log.level", "must be one of %s, got %q", strings.Join(logLevels, ", "), c.Log.Level)
	}
	positive("log.stats_interval", c.Log.StatsInterval)
	if a := c.Metrics.Address; a != "" {
		if err := checkLoopback(a); err != nil {
			bad("metrics.address", "%v", err)
		}
	}

	positive("queue.max_lifetime", c.Queue.MaxLifetime)
	positive("queue.gc_interval", c.Queue.GCInterval)
	atLeast("queue.workers", int64(c.Queue.Workers), 1)
	atLeast("queue.free_space_reserve", c.Queue.FreeSpaceReserve, 0)
	atLeast("queue.max_items", c.Queue.MaxItems, 0)

	positive("scheduler.window", c.Scheduler.Window)
	atLeast("scheduler.min_pool", int64(c.Scheduler.MinPool), 0)
	if f := c.Scheduler.SendFraction; !(f > 0 && f <= 1) {
		bad("scheduler.send_fraction", "must be in (0, 1] (a fraction of the pool), got %g", f)
	}
	atLeast("scheduler.max_batch", int64(c.Scheduler.MaxBatch), 0)
	atLeast("scheduler.concurrency", int64(c.Scheduler.Concurrency), 1)

	r := c.Retry
	atLeast("retry.max_attempts", int64(r.MaxAttempts), 1)
	positive("retry.base", r.Base)
	if r.Factor < 1 {
		bad("retry.factor", "must be at least 1 (waits must not shrink), got %g", r.Factor)
	}
	positive("retry.max", r.Max)
	if r.Max > 0 && r.Max < r.Base {
		bad("retry.max", "%s is below retry.base (%s)", fmtDur(r.Max), fmtDur(r.Base))
	}
	if !(r.Jitter >= 0 && r.Jitter < 1) {
		bad("retry.jitter", "must be in [0, 1), got %g", r.Jitter)
	}

	c.validateListeners(bad, atLeast, positive)
	c.validatePipeline(e, bad)
	c.validateMix(bad, positive)
	c.validateTor(bad, positive)
	c.validateCover(bad, positive)
}

// capabilityRE is a descriptor capability (the nodes package checks the
// same when it verifies a descriptor).
var capabilityRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

func (c *Config) validateMix(bad func(string, string, ...any), positive func(string, sdk.Duration)) {
	m := c.Mix
	if m == nil {
		return
	}
	if m.Name == "" {
		bad("mix", "name is required (this node's name in its descriptor)")
	}
	if m.Address == "" {
		bad("mix", "address is required (host:port of the mix listener)")
	} else if err := checkHostPort(m.Address, 0); err != nil {
		bad("mix.address", "%v", err)
	}
	if m.NodesFile == "" && m.Directory == nil {
		bad("mix", "nodes_file or directory is required (the nodes.json directory, or the directory authorities)")
	}
	validateMixDirectory(m.Directory, c.Tor != nil, bad)
	if m.HopDelay.Plugin == "" {
		bad("mix", "hop_delay is required: a delay stage for every forwarded packet ({plugin: delay-exponential, config: {mean: 5s}})")
	} else if !NameRE.MatchString(m.HopDelay.Plugin) {
		bad("mix.hop_delay.plugin", "%q must match %s", m.HopDelay.Plugin, NameRE)
	}
	if p := m.HopDelay.Process; p != "" && p != "shared" && p != "own" {
		bad("mix.hop_delay.process", "%q must be shared or own", p)
	}
	if m.PacketSize < minPacketSize || m.PacketSize > transport.MaxPacketSize {
		bad("mix.packet_size", "must be between %d and %d bytes, got %d", minPacketSize, transport.MaxPacketSize, m.PacketSize)
	}
	positive("mix.epoch", m.Epoch)
	if m.KeysAhead < 1 || m.KeysAhead > 1000 {
		bad("mix.keys_ahead", "must be between 1 and 1000 epochs, got %d", m.KeysAhead)
	} else if m.Directory != nil && m.KeysAhead > DirectoryKeysAhead {
		bad("mix.keys_ahead", "%d with mix.directory: the node publishes its keys to the authorities every epoch, so it keeps only the current, the next and one epoch of margin (keys_ahead %d); every key further ahead is a private key on disk that decrypts its epoch's traffic if the node is seized. Remove keys_ahead or set %d", m.KeysAhead, DirectoryKeysAhead, DirectoryKeysAhead)
	}
	if _, err := mixkey.ParseKind(m.SphinxFormat); err != nil {
		bad("mix.sphinx_format", "must be x25519 or xwing, got %q", m.SphinxFormat)
	}
	positive("mix.probe_interval", m.ProbeInterval)
	if m.LoopTimeout < 0 {
		bad("mix.loop_timeout", "must not be negative (0 or absent: derived from the hop delay)")
	}
	if m.Grace < 0 {
		bad("mix.grace", "must not be negative")
	}
	if m.Epoch > 0 && m.Epoch.D()%time.Second != 0 {
		bad("mix.epoch", "must be a whole number of seconds, got %s", fmtDur(m.Epoch))
	}
	if m.Cover.DropRate < 0 || m.Cover.LoopRate < 0 {
		bad("mix.cover", "rates must not be negative")
	}
	for i, c := range m.Capabilities {
		switch {
		case c == "exit":
			bad("mix.capabilities", "list \"exit\" with exit: true, not here")
		case !capabilityRE.MatchString(c):
			bad("mix.capabilities", "%q: want 1 to 32 of a-z 0-9 - starting with a letter", c)
		case slices.Contains(m.Capabilities[:i], c):
			bad("mix.capabilities", "%q listed twice", c)
		}
	}
	if len(m.Capabilities) > 15 {
		bad("mix.capabilities", "at most 15, got %d", len(m.Capabilities))
	}
	if m.SendRate <= 0 {
		bad("mix.send_rate", "must be positive (packets per second), got %g", m.SendRate)
	}
	if m.SendQueueLimit < 0 {
		bad("mix.send_queue_limit", "must not be negative, got %d", m.SendQueueLimit)
	}
	if m.Mixer != "" {
		found := false
		for _, st := range c.Pipeline {
			found = found || st.Name == m.Mixer
		}
		if !found {
			bad("mix.mixer", "no pipeline stage named %q", m.Mixer)
		}
	}
}

func (c *Config) validateListeners(bad func(string, string, ...any), atLeast func(string, int64, int64), positive func(string, sdk.Duration)) {
	names, addrs := map[string]int{}, map[string]int{}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if l.Address == "" {
			bad(p, "address is required (host:port, e.g. 127.0.0.1:2525)")
		} else if err := checkHostPort(l.Address, 0); err != nil {
			bad(p+".address", "%v", err)
		} else if j, dup := addrs[l.Address]; dup {
			bad(p+".address", "%q is already the address of listeners[%d]", l.Address, j)
		} else {
			addrs[l.Address] = i
		}
		if j, dup := names[l.Name]; dup && l.Name != "" {
			bad(p+".name", "%q is already the name of listeners[%d]", l.Name, j)
		} else {
			names[l.Name] = i
		}
		atLeast(p+".max_message_bytes", l.MaxMessageBytes, 1)
		atLeast(p+".max_recipients", int64(l.MaxRecipients), 1)
		if l.MaxLineLength < MinLineLength {
			bad(p+".max_line_length", "must be at least %d bytes including CRLF (RFC 5321 §4.5.3.1.6), got %d", MinLineLength, l.MaxLineLength)
		}
		atLeast(p+".max_header_bytes", l.MaxHeaderBytes, 1)
		atLeast(p+".max_header_fields", int64(l.MaxHeaderFields), 1)
		positive(p+".read_timeout", l.ReadTimeout)
		positive(p+".write_timeout", l.WriteTimeout)
		atLeast(p+".max_sessions", int64(l.MaxSessions), 1)
		atLeast(p+".max_sessions_per_client", int64(l.MaxSessionsPerClient), 1)
		positive(p+".max_session_time", l.MaxSessionTime)
		atLeast(p+".min_data_rate", int64(l.MinDataRate), 1)
		atLeast(p+".max_junk_commands", int64(l.MaxJunkCommands), 1)
		atLeast(p+".max_errors", int64(l.MaxErrors), 1)

		if t := l.TLS; t != nil {
			if t.CertFile == "" {
				bad(p+".tls", "cert_file is required")
			}
			if t.KeyFile == "" {
				bad(p+".tls", "key_file is required")
			}
		}
		if a := l.Auth; a != nil {
			if a.UsersFile == "" {
				bad(p+".auth", "users_file is required")
			}
			if l.TLS == nil {
				bad(p+".auth", "needs tls: AUTH is offered only after STARTTLS")
			}
		}

		rl := l.Relay
		for j, n := range rl.Networks {
			if n.Bits() == 0 {
				bad(fmt.Sprintf("%s.relay.networks[%d]", p, j), "%s admits every client (an open relay); for a public entry use anyone: true with a rate_limit", n)
			}
		}
		if rl.AuthenticatedUsers && l.Auth == nil {
			bad(p+".relay.authenticated_users", "needs an auth: block on this listener, or nobody can authenticate")
		}
		if rl.Anyone && rl.RateLimit == nil {
			bad(p+".relay.anyone", "needs a rate_limit: a public entry without one can be flooded")
		}
		if q := rl.RateLimit; q != nil {
			rp := p + ".relay.rate_limit"
			if q.Messages < 1 {
				bad(rp+".messages", "must be at least 1, got %d", q.Messages)
			}
			if q.Per <= 0 {
				bad(rp+".per", "must be a positive duration like \"1h\", got %s", fmtDur(q.Per))
			}
			if q.Burst < 1 {
				bad(rp+".burst", "must be at least 1, got %d", q.Burst)
			}
		}
		atLeast(p+".relay.max_recipients", int64(rl.MaxRecipients), 0)
		if rl.MaxRecipients > l.MaxRecipients && l.MaxRecipients > 0 {
			bad(p+".relay.max_recipients", "%d is above the listener's max_recipients (%d)", rl.MaxRecipients, l.MaxRecipients)
		}
		for j, d := range l.LocalDomains {
			if err := checkDomain(d); err != nil {
				bad(fmt.Sprintf("%s.local_domains[%d]", p, j), "%v", err)
			}
		}
	}
}

func (c *Config) validatePipeline(e *errs, bad func(string, string, ...any)) {
	if len(c.Pipeline) == 0 {
		e.add(c.Line("pipeline"), "pipeline: no stages; a pipeline needs at least one stage (- name: ..., plugin: ...)")
	}
	names := map[string]int{}
	used := map[string]bool{}
	for i, st := range c.Pipeline {
		p := fmt.Sprintf("pipeline[%d]", i)
		switch {
		case st.Name == "":
			bad(p, "name is required")
		case !NameRE.MatchString(st.Name):
			bad(p+".name", "%q must match %s (lower case letters, digits, - and _)", st.Name, NameRE)
		default:
			if j, dup := names[st.Name]; dup {
				bad(p+".name", "duplicate stage name %q (first at line %d)", st.Name, j)
			} else {
				names[st.Name] = st.Line
			}
		}
		switch {
		case st.Plugin == "":
			bad(p, "plugin is required (the name of a binary in plugin_dir)")
		case !NameRE.MatchString(st.Plugin):
			bad(p+".plugin", "%q must match %s (a file name in plugin_dir)", st.Plugin, NameRE)
		}
		if st.Process != "" && st.Process != "shared" && st.Process != "own" {
			bad(p+".process", "%q must be shared or own", st.Process)
		}
		used[st.Plugin] = true
	}
	if c.Mix != nil {
		used[c.Mix.HopDelay.Plugin] = true // a stage too, outside the pipeline
	}
	for name, pin := range c.Plugins {
		p := "plugins." + name
		if !used[name] {
			bad(p, "no stage uses plugin %q: a pin must name a plugin of the pipeline", name)
		}
		if b, err := hex.DecodeString(pin.SHA256); err != nil || len(b) != 32 {
			bad(p+".sha256", "must be 64 hex digits (sha256sum of the binary), got %q", pin.SHA256)
		}
	}
}

// checkFiles checks that the files the config names can be read, at Load.
func (c *Config) checkFiles() error {
	e := &errs{file: c.Path}
	read := func(path, file string) bool {
		_, err := os.ReadFile(file)
		if err == nil {
			return true
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		hint := ""
		if !filepath.IsAbs(file) {
			hint = " (relative paths are from the working directory)"
		}
		e.add(c.Line(path), "%s: cannot read %q: %v%s", path, file, err, hint)
		return false
	}
	if c.Mix != nil && c.Mix.DestinationBlockFile != "" && read("mix.destination_block_file", c.Mix.DestinationBlockFile) {
		if _, err := ReadBlockList(c.Mix.DestinationBlockFile); err != nil {
			var bl ErrorList
			if errors.As(err, &bl) {
				e.list = append(e.list, bl...)
			} else {
				e.add(c.Line("mix.destination_block_file"), "mix.destination_block_file: %v", err)
			}
		}
	}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if l.TLS != nil {
			read(p+".tls.cert_file", l.TLS.CertFile)
			read(p+".tls.key_file", l.TLS.KeyFile)
		}
		if l.Auth != nil && read(p+".auth.users_file", l.Auth.UsersFile) {
			// the listener reads it with the same function at start
			if _, err := users.Read(l.Auth.UsersFile); err != nil {
				e.add(c.Line(p+".auth.users_file"), "%s: %v", p+".auth.users_file", err)
			}
		}
		if f := l.Relay.DestinationBlockFile; f != "" && read(p+".relay.destination_block_file", f) {
			if _, err := ReadBlockList(f); err != nil {
				var bl ErrorList
				if errors.As(err, &bl) {
					e.list = append(e.list, bl...)
				} else {
					e.add(c.Line(p+".relay.destination_block_file"), "%s: %v", p+".relay.destination_block_file", err)
				}
			}
		}
	}
	if c.Tor != nil && c.Tor.PasswordFile != "" {
		read("tor.password_file", c.Tor.PasswordFile)
	}
	return e.list.err()
}

// checkDomain checks the syntax of a domain name (RFC 1035 §2.3.1 with
// RFC 1123 §2.1's leading digits): ASCII labels of letters, digits and
// inner hyphens, each 1-63 bytes, 253 bytes in all, no trailing dot.
func checkDomain(s string) error {
	if s == "" {
		return errors.New("empty domain name")
	}
	if strings.HasSuffix(s, ".") {
		return fmt.Errorf("%q: write the domain without the trailing dot", s)
	}
	if len(s) > 253 {
		return fmt.Errorf("domain name longer than 253 bytes")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a domain name: each dot-separated label must be 1-63 characters", s)
		}
		for i := range len(label) {
			ch := label[i]
			switch {
			case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9':
			case ch == '-' && i > 0 && i < len(label)-1:
			case ch >= 0x80:
				return fmt.Errorf("%q is not an ASCII domain name: write the A-label (xn--...) form", s)
			default:
				return fmt.Errorf("%q is not a domain name (letters, digits, inner hyphens and dots only)", s)
			}
		}
	}
	return nil
}

// checkHostPort checks "host:port" with a numeric port >= minPort.
func checkHostPort(a string, minPort int) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:2525 or [::1]:2525)", a)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return fmt.Errorf("%q: port must be a number from %d to 65535", a, minPort)
	}
	return nil
}

func checkLoopback(a string) error {
	if err := checkHostPort(a, 1); err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(a)
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: metrics must listen on a loopback IP literal such as 127.0.0.1:9100 or [::1]:9100", a)
	}
	return nil
}

// fmtDur writes a duration the way the file would: "5d", "1h", "1m30s".
func fmtDur(d sdk.Duration) string {
	const day = sdk.Duration(24 * time.Hour)
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// validateMixDirectory checks the authorities; with tor (every connection
// through Tor) their addresses must be onion services: a clearnet
// authority would be reached through an exit that sees, and can block or
// delay, every upload and fetch of this node.
func validateMixDirectory(d *MixDirectory, tor bool, bad func(key, format string, args ...any)) {
	if d == nil {
		return
	}
	if len(d.Authorities) == 0 {
		bad("mix.directory.authorities", "at least one authority is required")
	}
	for i, a := range d.Authorities {
		k := fmt.Sprintf("mix.directory.authorities[%d]", i)
		if b, err := base64.StdEncoding.DecodeString(a.Identity); err != nil || len(b) != 32 {
			bad(k+".identity", "want a base64 32-byte Ed25519 public key (mixmta authority key prints it)")
		}
		// One authority listed twice would count its signature twice
		// toward the majority.
		for j, o := range d.Authorities[:i] {
			if o.Identity == a.Identity {
				bad(k+".identity", "the key of authorities[%d] again: each authority once", j)
			}
			if o.Name == a.Name {
				bad(k+".name", "the name of authorities[%d] again: each authority once", j)
			}
		}
		if err := checkHostPort(a.Address, 0); err != nil {
			bad(k+".address", "%v", err)
		} else if host, _, _ := net.SplitHostPort(a.Address); tor {
			if _, _, err := onion.Parse(host); err != nil {
				bad(k+".address", "%q: with a tor: section an authority is reached only as a v3 onion service (NAME.onion:PORT; publish its directory listener with tor.onion_services listener %q): %v", a.Address, DirectoryOnion, err)
			}
		}
	}
	if d.Listen != "" {
		if err := checkHostPort(d.Listen, 0); err != nil {
			bad("mix.directory.listen", "%v", err)
		}
	}
}
