package config

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Tor makes Tor a component of the node (docs/tor.md). With it, every
// outbound connection of the core (mix links) and of every stage whose
// plugin takes a `socks5` key goes through Tor: the core sets that key to
// Tor's SocksPort, and a stage that sets it to anything else is refused.
// Either a system tor (SocksAddress, and ControlAddress to publish onion
// services) or a tor mixmta starts itself (Managed).
type Tor struct {
	// Managed: mixmta starts Debian's tor with its own DataDirectory
	// DATA_DIR/tor, supervises it and stops it on exit.
	Managed bool `yaml:"managed"`
	// Binary of the managed tor. Default "tor" (looked up in PATH).
	Binary string `yaml:"binary"`
	// Torrc: extra lines for the managed tor's torrc (e.g. bridges, or a
	// private network's DirAuthority).
	Torrc []string `yaml:"torrc"`
	// SocksAddress is tor's SocksPort, host:port. A system tor's is
	// required (Debian: 127.0.0.1:9050). A managed tor opens it (a
	// loopback address); default a free 127.0.0.1 port chosen at start.
	SocksAddress string `yaml:"socks_address"`
	// ControlAddress is tor's ControlPort, host:port or unix:/path. A
	// system tor's (Debian: 127.0.0.1:9051 or unix:/run/tor/control) is
	// required with OnionServices. A managed tor opens it (loopback or
	// unix); default unix:DATA_DIR/tor/control.
	ControlAddress string `yaml:"control_address"`
	// CookieFile: a system tor's control cookie (CookieAuthentication 1;
	// empty, with no PasswordFile: the file tor names in PROTOCOLINFO),
	// or where a managed tor writes it (default DATA_DIR/tor/control_auth_cookie).
	CookieFile string `yaml:"cookie_file"`
	// PasswordFile holds the control password: a system tor's
	// (HashedControlPassword), or one a managed tor accepts besides the
	// cookie (for a controller such as nyx). Load checks it can be read.
	PasswordFile string `yaml:"password_file"`
	// BootstrapTimeout bounds the managed tor's bootstrap. Default 3m.
	BootstrapTimeout sdk.Duration `yaml:"bootstrap_timeout"`
	// PublishTimeout: how long to wait for an onion service's descriptor
	// to reach the HSDirs before logging a warning. Default 5m.
	PublishTimeout sdk.Duration `yaml:"publish_timeout"`
	// OnionServices publish listeners as v3 onion services (ADD_ONION).
	OnionServices []OnionService `yaml:"onion_services"`
}

// OnionService publishes one listener as a v3 onion service whose key is
// kept in KeyFile (0600), so its address is stable.
type OnionService struct {
	// Listener is the name of an SMTP listener, "mix" for the mix
	// listener, or "directory" for an authority's directory listener
	// (required).
	Listener string `yaml:"listener"`
	// Port is the onion service's virtual port. Default 25 for SMTP, the
	// listener's own port for "mix" and "directory".
	Port int `yaml:"port"`
	// KeyFile holds the service's ed25519 seed (created 0600 on first
	// start). Default DATA_DIR/onion/LISTENER.key.
	KeyFile string `yaml:"key_file"`
}

// MixOnion is the listener name of the mix listener in OnionServices.
const MixOnion = "mix"

// DirectoryOnion is the listener name of an authority's directory
// listener (mix.directory.listen) in OnionServices.
const DirectoryOnion = "directory"

func (c *Config) torDefaults() {
	t := c.Tor
	if t == nil {
		return
	}
	str(&t.Binary, "tor")
	c.dur(&t.BootstrapTimeout, "tor.bootstrap_timeout", 3*time.Minute)
	c.dur(&t.PublishTimeout, "tor.publish_timeout", 5*time.Minute)
	for i := range t.OnionServices {
		o := &t.OnionServices[i]
		str(&o.KeyFile, filepath.Join(c.DataDir, "onion", o.Listener+".key"))
	}
}

func (c *Config) validateTor(bad func(string, string, ...any), positive func(string, sdk.Duration)) {
	t := c.Tor
	if t == nil {
		return
	}
	if t.SocksAddress != "" {
		if err := checkHostPort(t.SocksAddress, 1); err != nil {
			bad("tor.socks_address", "%v", err)
		} else if t.Managed {
			if err := checkLoopbackHostPort(t.SocksAddress); err != nil {
				bad("tor.socks_address", "%v", err)
			}
		}
	}
	if a := t.ControlAddress; a != "" && !strings.HasPrefix(a, "unix:") {
		if err := checkHostPort(a, 1); err != nil {
			bad("tor.control_address", "%v", err)
		} else if t.Managed {
			if err := checkLoopbackHostPort(a); err != nil {
				bad("tor.control_address", "%v", err)
			}
		}
	}
	if !t.Managed {
		if t.SocksAddress == "" {
			bad("tor", "socks_address is required for a system tor (Debian: 127.0.0.1:9050), or set managed: true")
		}
		if len(t.Torrc) > 0 {
			bad("tor.torrc", "is for a managed tor (managed: true); a system tor reads its own torrc")
		}
		if t.CookieFile != "" && t.PasswordFile != "" {
			bad("tor", "set cookie_file or password_file, not both")
		}
		if len(t.OnionServices) > 0 && t.ControlAddress == "" {
			bad("tor", "control_address is required to publish onion_services")
		}
	}
	positive("tor.bootstrap_timeout", t.BootstrapTimeout)
	positive("tor.publish_timeout", t.PublishTimeout)
	names := map[string]bool{}
	for _, l := range c.Listeners {
		names[l.Name] = true
	}
	seen := map[string]bool{}
	for i, o := range t.OnionServices {
		p := fmt.Sprintf("tor.onion_services[%d]", i)
		switch {
		case o.Listener == "":
			bad(p, "listener is required (an SMTP listener's name, %q or %q)", MixOnion, DirectoryOnion)
		case o.Listener == MixOnion && c.Mix == nil:
			bad(p+".listener", "%q needs a mix: section", MixOnion)
		case o.Listener == DirectoryOnion && (c.Mix == nil || c.Mix.Directory == nil || c.Mix.Directory.Listen == ""):
			bad(p+".listener", "%q needs mix.directory.listen (this node an authority)", DirectoryOnion)
		case o.Listener != MixOnion && o.Listener != DirectoryOnion && !names[o.Listener]:
			bad(p+".listener", "no listener named %q", o.Listener)
		case seen[o.Listener]:
			bad(p+".listener", "%q is published twice", o.Listener)
		}
		seen[o.Listener] = true
		if o.Port < 0 || o.Port > 65535 {
			bad(p+".port", "must be 1-65535, got %d", o.Port)
		}
	}
}

func checkLoopbackHostPort(a string) error {
	if err := checkLoopback(a); err != nil {
		return fmt.Errorf("%q: must be a loopback IP literal and port, e.g. 127.0.0.1:9150", a)
	}
	return nil
}

// OnionPort is the virtual port of o: Port, or its default.
func (c *Config) OnionPort(o OnionService) int {
	if o.Port != 0 {
		return o.Port
	}
	addr := ""
	switch {
	case o.Listener == MixOnion && c.Mix != nil:
		addr = c.Mix.Address
	case o.Listener == DirectoryOnion && c.Mix != nil && c.Mix.Directory != nil:
		addr = c.Mix.Directory.Listen
	}
	if addr != "" {
		if _, ps, err := net.SplitHostPort(addr); err == nil {
			if p, err := strconv.Atoi(ps); err == nil && p > 0 {
				return p
			}
		}
	}
	return 25
}
