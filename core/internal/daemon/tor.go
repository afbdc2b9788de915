package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/tor"
	"github.com/mixmta/mixmta/sdk"
)

// SOCKSKey is the config key through which a plugin that connects out
// takes its SOCKS5 proxy. With a tor: section the core sets it to Tor's
// SocksPort in every stage whose plugin declares it; a stage that sets it
// itself to anything else is refused, so no stage can be pointed around
// Tor.
const SOCKSKey = "socks5"

// torParts is the running Tor component.
type torParts struct {
	managed *tor.Managed
	dialer  *tor.Dialer
	log     hclog.Logger

	mu   sync.Mutex
	ctls []*tor.Control // one per published onion service
}

// startTor starts or connects the tor of cfg's tor: section. For a
// managed tor it fills cfg.Tor.SocksAddress with the port chosen, which
// the stages are then configured with.
func startTor(ctx context.Context, cfg *config.Config, log hclog.Logger) (*torParts, error) {
	tc := cfg.Tor
	tp := &torParts{log: log.Named("tor")}
	if tc.Managed {
		o := tor.ManagedOptions{
			Binary:           tc.Binary,
			DataDir:          filepath.Join(cfg.DataDir, "tor"),
			ControlAddress:   tc.ControlAddress,
			CookieFile:       tc.CookieFile,
			Torrc:            tc.Torrc,
			BootstrapTimeout: tc.BootstrapTimeout.D(),
			Log:              tp.log,
		}
		if tc.SocksAddress != "" {
			fmt.Sscanf(tc.SocksAddress[strings.LastIndex(tc.SocksAddress, ":")+1:], "%d", &o.SocksPort)
		}
		if tc.PasswordFile != "" {
			pw, err := readPassword(tc.PasswordFile)
			if err != nil {
				return nil, err
			}
			o.Password = pw
		}
		m, err := tor.StartManaged(ctx, o)
		if err != nil {
			return nil, err
		}
		tp.managed = m
		tc.SocksAddress = m.SocksAddr
	}
	d, err := tor.NewDialer(tc.SocksAddress)
	if err != nil {
		tp.close()
		return nil, err
	}
	tp.dialer = d
	tp.log.Info("[TOR] outbound connections go through tor", "managed", tc.Managed)
	return tp, nil
}

func readPassword(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("tor.password_file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// controlAuth is how to authenticate to the tor's ControlPort.
func controlAuth(cfg *config.Config) (tor.Auth, error) {
	tc := cfg.Tor
	a := tor.Auth{CookieFile: tc.CookieFile}
	if tc.Managed {
		a.CookieFile = filepath.Join(cfg.DataDir, "tor", "control_auth_cookie")
		if tc.CookieFile != "" {
			a.CookieFile = tc.CookieFile
		}
		return a, nil
	}
	if tc.PasswordFile != "" {
		pw, err := readPassword(tc.PasswordFile)
		if err != nil {
			return a, err
		}
		a = tor.Auth{Password: pw}
	}
	return a, nil
}

// publishOnions publishes every onion service of cfg, each on its own
// control connection (the service lives as long as that connection), and
// waits in the background for each descriptor upload, logging it. targets
// maps a listener name (or config.MixOnion, config.DirectoryOnion) to its
// bound address.
func (tp *torParts) publishOnions(cfg *config.Config, targets map[string]string) error {
	auth, err := controlAuth(cfg)
	if err != nil {
		return err
	}
	for _, o := range cfg.Tor.OnionServices {
		target, ok := targets[o.Listener]
		if !ok {
			return fmt.Errorf("tor: onion service for %q: no such listener running", o.Listener)
		}
		key, err := OnionKey(o.KeyFile)
		if err != nil {
			return err
		}
		port := cfg.OnionPort(o)
		publish := func() error {
			addr := cfg.Tor.ControlAddress
			if tp.managed != nil {
				addr = tp.managed.ControlAddr
			}
			c, err := tor.DialControl(addr, auth, 30*time.Second)
			if err != nil {
				return err
			}
			onion, err := tor.Publish(c, key, []tor.Port{{Virtual: port, Target: target}})
			if err != nil {
				c.Close()
				return fmt.Errorf("tor: onion service for %q: %w", o.Listener, err)
			}
			tp.mu.Lock()
			tp.ctls = append(tp.ctls, c)
			tp.mu.Unlock()
			go func() {
				if err := tor.WaitUploaded(c, onion, cfg.Tor.PublishTimeout.D()); err != nil {
					tp.log.Warn("[TOR] onion service not yet reachable", "listener", o.Listener, "error", err)
					return
				}
				tp.log.Info("[TOR] onion service published", "listener", o.Listener, "onion", fmt.Sprintf("%s:%d", onion, port))
			}()
			return nil
		}
		if tp.managed != nil {
			// Run now and again after every restart of the managed tor.
			first := true
			if err := tp.managed.OnStart(func(*tor.Control) error {
				if !first {
					tp.dropClosed()
				}
				first = false
				return publish()
			}); err != nil {
				return err
			}
			continue
		}
		if err := publish(); err != nil {
			return err
		}
	}
	return nil
}

// dropClosed forgets control connections of a tor that was restarted.
func (tp *torParts) dropClosed() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var keep []*tor.Control
	for _, c := range tp.ctls {
		if _, err := c.GetInfo("version"); err == nil {
			keep = append(keep, c)
		} else {
			c.Close()
		}
	}
	tp.ctls = keep
}

func (tp *torParts) close() {
	if tp == nil {
		return
	}
	tp.mu.Lock()
	for _, c := range tp.ctls {
		c.Close()
	}
	tp.ctls = nil
	tp.mu.Unlock()
	if tp.managed != nil {
		tp.managed.Close()
	}
}

// OnionKey loads the onion service key in file, creating it (0600, in a
// 0700 directory) on first use.
func OnionKey(file string) (*tor.OnionKey, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	k, err := tor.LoadOrCreateOnionKey(file)
	if err != nil {
		return nil, fmt.Errorf("tor: %w", err)
	}
	return k, nil
}

// torStageConfig sets the SOCKS key of a stage whose plugin declares one
// to Tor's SocksPort, and refuses a stage that points it elsewhere.
// Without a tor: section js is returned unchanged.
func torStageConfig(cfg *config.Config, st config.Stage, schema *sdk.Schema, js []byte) ([]byte, error) {
	if cfg.Tor == nil || schema == nil || schema.Properties[SOCKSKey] == nil {
		return js, nil
	}
	socks := cfg.Tor.SocksAddress
	if socks == "" {
		// A managed tor picks its port when it starts; check-config
		// validates with a stand-in.
		socks = "127.0.0.1:9050"
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	if v, ok := m[SOCKSKey]; ok {
		var set string
		if json.Unmarshal(v, &set) != nil || set != cfg.Tor.SocksAddress {
			return nil, fmt.Errorf("%s:%d: stage %q: %s is set by the tor: section (all traffic goes through Tor); remove it from the stage", cfg.Path, st.KeyLine(SOCKSKey), st.Name, SOCKSKey)
		}
	}
	m[SOCKSKey], _ = json.Marshal(socks)
	return json.Marshal(m)
}

// publishOnions publishes the listeners named in tor.onion_services, once
// they are bound (a listener on port 0 has its real port by then).
func (d *Daemon) publishOnions() error {
	if d.tor == nil || len(d.cfg.Tor.OnionServices) == 0 {
		return nil
	}
	targets := map[string]string{}
	for i, l := range d.listeners {
		targets[d.cfg.Listeners[i].Name] = l.Addr().String()
	}
	if d.cfg.Mix != nil {
		targets[config.MixOnion] = d.cfg.Mix.Address
	}
	if d.mix != nil && d.mix.consensus != nil && d.mix.consensus.authLn != nil {
		targets[config.DirectoryOnion] = d.mix.consensus.authLn.Addr().String()
	}
	return d.tor.publishOnions(d.cfg, targets)
}

// torMix makes the mix transport dial through Tor when a tor: section is
// set: each peer's onion address (links.peer) on its own circuit (the
// dialer isolates by destination), the pinned TLS running inside the
// Tor stream. The handshake timeout covers an onion circuit.
func (d *Daemon) torMix(c *transport.Config) {
	if d.tor == nil {
		return
	}
	c.Dialer = d.tor.dialer
	if c.HandshakeTimeout < time.Minute {
		c.HandshakeTimeout = time.Minute
	}
}
