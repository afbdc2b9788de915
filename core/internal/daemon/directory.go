package daemon

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/directory"
	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/sdk"
)

// nodeSource is where a mix node takes the network's nodes from: the
// nodes file (liveDirectory) or the consensus of the directory
// authorities (consensusSource).
type nodeSource interface {
	get() *nodes.Directory
	Nodes() []sdk.DirectoryNode
	watch(ctx context.Context)
}

// consensusSource is a node's directory client, and its authority when
// it is one.
type consensusSource struct {
	client    *directory.Client
	authority *directory.Server
	authLn    net.Listener
	probeTr   *transport.Direct
	log       hclog.Logger
}

func (c *consensusSource) get() *nodes.Directory { return c.client.Directory() }

func (c *consensusSource) Nodes() []sdk.DirectoryNode { return c.get().Nodes(time.Now()) }

// FromConsensus implements mixnet.ConsensusDirectory: a node that reaches
// only a minority of these nodes holds its mail.
func (c *consensusSource) FromConsensus() bool { return true }

func (c *consensusSource) watch(ctx context.Context) {
	if c.authority != nil {
		go func() {
			if err := c.authority.Serve(ctx, c.authLn); err != nil {
				c.log.Error("[DIRECTORY] authority listener stopped", "error", err)
			}
		}()
		go c.authority.Run(ctx)
	}
	c.client.Run(ctx)
}

var _ mixnet.ConsensusDirectory = (*consensusSource)(nil)

func (c *consensusSource) close() {
	if c == nil {
		return
	}
	if c.authLn != nil {
		c.authLn.Close()
	}
	if c.probeTr != nil {
		c.probeTr.Close()
	}
}

// authorities decodes mix.directory.authorities (validated by config).
func authorities(d *config.MixDirectory) ([]directory.Authority, error) {
	var out []directory.Authority
	for _, a := range d.Authorities {
		pub, err := directory.ParseAuthorityKey(a.Identity)
		if err != nil {
			return nil, fmt.Errorf("mix.directory.authorities %s: %w", a.Name, err)
		}
		out = append(out, directory.Authority{Name: a.Name, Identity: pub, Address: a.Address})
	}
	return out, nil
}

// authorityKnown reports whether pub is one of the authorities: their
// probes must reach this node's mix listener before any consensus lists
// them.
func authorityKnown(auths []directory.Authority, pub ed25519.PublicKey) (sdk.NodeID, bool) {
	for _, a := range auths {
		if a.Identity.Equal(pub) {
			return nodes.NodeIDOf(pub), true
		}
	}
	return sdk.NodeID{}, false
}

// newConsensusSource makes the directory client of this node (and its
// authority when mix.directory.listen is set). The HTTP client dials
// through dialer (Tor when configured).
func (d *Daemon) newConsensusSource(id *nodes.Identity, ks *nodes.KeyStore, auths []directory.Authority, dialer transport.ContextDialer, log hclog.Logger) (*consensusSource, error) {
	m := d.cfg.Mix
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}
	info := nodes.NodeInfo{Name: m.Name, MixAddress: m.Address, Capabilities: append([]string(nil), m.Capabilities...)}
	if m.Exit {
		info.Capabilities = append(info.Capabilities, nodes.CapExit)
	}
	if d.cfg.Tor != nil {
		for _, o := range d.cfg.Tor.OnionServices {
			if o.Listener == config.MixOnion {
				k, err := OnionKey(o.KeyFile)
				if err != nil {
					return nil, err
				}
				info.OnionAddress = fmt.Sprintf("%s:%d", k.Address(), d.cfg.OnionPort(o))
			}
		}
	}
	params := d.networkParams()
	client, err := directory.NewClient(directory.ClientConfig{
		Authorities: auths,
		Epoch:       m.Epoch.D(),
		// The mix node's refresh creates the keys (Ensure); a descriptor
		// only publishes them.
		Descriptor: func(now time.Time) (*nodes.Descriptor, error) {
			return nodes.Export(id, ks.Published(now), info, now)
		},
		CheckParams: func(p directory.Params) error {
			if p.PacketSize != params.PacketSize || p.EpochSeconds != params.EpochSeconds || p.SphinxFormat != params.SphinxFormat {
				return fmt.Errorf("network parameters packet_size %d, epoch %ds, sphinx format %q differ from this node's mix.packet_size %d, mix.epoch %ds, format %q",
					p.PacketSize, p.EpochSeconds, p.SphinxFormat, params.PacketSize, params.EpochSeconds, params.SphinxFormat)
			}
			return nil
		},
		StateFile: filepath.Join(d.cfg.DataDir, "consensus.json"),
		Client:    hc,
		Log:       log,
	})
	if err != nil {
		return nil, err
	}
	src := &consensusSource{client: client, log: log}
	if m.Directory.Listen == "" {
		return src, nil
	}
	key, _, err := nodes.LoadOrCreateKey(m.Directory.AuthorityKey)
	if err != nil {
		return nil, fmt.Errorf("mix.directory.authority_key: %w", err)
	}
	// The authority probes nodes under its own key, which every node's
	// listener accepts (authorityKnown).
	probeTr, err := transport.NewDirect(transport.Config{Identity: key, PacketSize: m.PacketSize, Dialer: dialer, Logger: log.Named("probe"), HandshakeTimeout: handshakeTimeout(d)})
	if err != nil {
		return nil, err
	}
	srv, err := directory.NewServer(directory.AuthorityConfig{
		Key:           key,
		Authorities:   auths,
		Epoch:         m.Epoch.D(),
		Params:        params,
		ProbeInterval: m.ProbeInterval.D(),
		Probe: func(ctx context.Context, n *nodes.Node) error {
			addr := n.MixAddress
			if d.tor != nil {
				if addr = n.OnionAddress; addr == "" {
					return fmt.Errorf("node %s has no onion address", n.ID.Short())
				}
			}
			return probeTr.Probe(ctx, transport.Peer{ID: n.ID, Address: addr, Identity: n.Identity})
		},
		Client: hc,
		Log:    log,
	})
	if err != nil {
		probeTr.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", m.Directory.Listen)
	if err != nil {
		probeTr.Close()
		return nil, fmt.Errorf("mix.directory.listen: %w", err)
	}
	src.authority, src.authLn, src.probeTr = srv, ln, probeTr
	log.Info("[DIRECTORY] authority listening", "address", ln.Addr().String(), "authorities", len(auths))
	return src, nil
}

func handshakeTimeout(d *Daemon) time.Duration {
	if d.tor != nil {
		return time.Minute
	}
	return 0
}

// networkParams are the network parameters this node runs with, as an
// authority votes for them and a consensus must carry them.
func (d *Daemon) networkParams() directory.Params {
	m := d.cfg.Mix
	return directory.Params{
		EpochSeconds: int64(m.Epoch.D() / time.Second),
		PacketSize:   m.PacketSize,
		SendRate:     m.SendRate,
		DropRate:     m.Cover.DropRate,
		LoopRate:     m.Cover.LoopRate,
		SphinxFormat: sphinxFormatParam(m.SphinxFormat),
	}
}

// sphinxFormatParam is the consensus spelling of mix.sphinx_format: absent
// for x25519, as in descriptors and the nodes file.
func sphinxFormatParam(f string) string {
	if f == "x25519" {
		return ""
	}
	return f
}
