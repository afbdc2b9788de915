package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/directory"
	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// mixParts is what a node with a mix section runs besides the pipeline.
type mixParts struct {
	node      *mixnet.Node
	transport *transport.Direct
	listener  transport.Listener
	hopDelay  *pluginhost.Stage
	frameLog  *os.File
	dir       nodeSource
	self      sdk.NodeID
	consensus *consensusSource // nil with a nodes file
}

// mixerStage finds the pipeline stage that serves the mixer kind.
func mixerStage(cfg *config.Config, started []*pluginhost.Stage) (int, error) {
	idx := -1
	for i, s := range started {
		if !s.Info.Has(sdk.KindMixer) {
			continue
		}
		if cfg.Mix.Mixer != "" && cfg.Pipeline[i].Name != cfg.Mix.Mixer {
			continue
		}
		if idx >= 0 {
			return -1, fmt.Errorf("%s: mix: stages %q and %q both offer the mixer kind; name one in mix.mixer", cfg.Path, cfg.Pipeline[idx].Name, cfg.Pipeline[i].Name)
		}
		idx = i
	}
	if idx < 0 {
		return -1, fmt.Errorf("%s: mix: no pipeline stage offers the mixer kind (add the sphinx stage)", cfg.Path)
	}
	return idx, nil
}

// startMix builds the mix node: keys, directory, transport, hop delay
// stage, and the mixnet engine hooked into the pipeline engine.
func (d *Daemon) startMix(ctx context.Context, started []*pluginhost.Stage) error {
	m := d.cfg.Mix
	log := d.log
	mixIdx, err := mixerStage(d.cfg, started)
	if err != nil {
		return err
	}
	id, err := nodes.LoadIdentity(m.KeysDir)
	if err != nil {
		return fmt.Errorf("mix: %w", err)
	}
	format, err := checkSphinxFormat(d.cfg, mixIdx)
	if err != nil {
		return err
	}
	ks, err := nodes.OpenFormat(m.KeysDir, m.Epoch.D(), m.Grace.D(), format)
	if err != nil {
		return fmt.Errorf("mix: %w", err)
	}
	ks.SetAhead(m.KeysAhead)
	var dir nodeSource
	var auths []directory.Authority
	var cons *consensusSource
	if m.Directory != nil {
		ks.DropBeyondAhead()
		if auths, err = authorities(m.Directory); err != nil {
			return err
		}
		var dialer transport.ContextDialer = &net.Dialer{KeepAlive: 15 * time.Second}
		if d.tor != nil {
			dialer = d.tor.dialer
		}
		if cons, err = d.newConsensusSource(id, ks, auths, dialer, log); err != nil {
			return fmt.Errorf("mix: directory: %w", err)
		}
		dir = cons
	} else {
		live, err := newLiveDirectory(m.NodesFile, format, log)
		if err != nil {
			return nodesFileError(d.cfg, err)
		}
		if _, ok := live.get().Lookup(id.ID()); !ok {
			log.Warn("[MIX] this node is not in the nodes file; other nodes cannot send to it", "node", id.ID().Short())
		}
		dir = live
	}
	hd, err := startStageOn(ctx, d.cfg, started[mixIdx].Host(), m.HopDelay, log)
	if err != nil {
		cons.close()
		return err
	}
	if !hd.Info.Has(sdk.KindDelayer) {
		hd.Close()
		return fmt.Errorf("%s:%d: mix.hop_delay: plugin %s is not a delayer", d.cfg.Path, m.HopDelay.Line, m.HopDelay.Plugin)
	}
	parts := &mixParts{hopDelay: hd, consensus: cons}
	tcfg := transport.Config{
		Identity:   id.PrivateKey(),
		PacketSize: m.PacketSize,
		Lookup: func(pub ed25519.PublicKey) (sdk.NodeID, bool) {
			n, ok := dir.get().Lookup(nodes.NodeIDOf(pub))
			if !ok || !n.Identity.Equal(pub) {
				return authorityKnown(auths, pub)
			}
			return n.ID, true
		},
		Logger: log.Named("transport"),
		Full:   func() bool { return d.linkFull(0) },
	}
	if m.FrameLog != "" {
		f, err := os.OpenFile(m.FrameLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			hd.Close()
			return fmt.Errorf("mix.frame_log: %w", err)
		}
		parts.frameLog = f
		tcfg.FrameLog = transport.FrameLogWriter(f)
	}
	d.torMix(&tcfg)
	tr, err := transport.NewDirect(tcfg)
	if err != nil {
		hd.Close()
		return err
	}
	parts.transport = tr
	exitStage := mixIdx + 1
	var blocks *config.BlockList // nil blocks nothing
	if f := m.DestinationBlockFile; f != "" {
		if blocks, err = config.ReadBlockList(f); err != nil {
			tr.Close()
			hd.Close()
			return fmt.Errorf("mix.destination_block_file: %w", err)
		}
	}
	node := mixnet.New(mixnet.Config{
		PacketSize:     m.PacketSize,
		EpochLength:    m.Epoch.D(),
		Grace:          m.Grace.D(),
		ProbeInterval:  m.ProbeInterval.D(),
		LoopTimeout:    m.LoopTimeout.D(),
		DropRate:       m.Cover.DropRate,
		LoopRate:       m.Cover.LoopRate,
		SendRate:       m.SendRate,
		PoolWindow:     d.cfg.Scheduler.Window.D(),
		MinPool:        d.cfg.Scheduler.MinPool,
		SendQueueLimit: m.SendQueueLimit,
		ExitStage:      exitStage,
		Blocked:        blocks.Blocked,
		Full:           d.linkFull,
	}, id.ID(), d.engine, started[mixIdx], hd, keyStore{ks}, dir, &mixnet.TransportLinks{Transport: tr, Onion: d.tor != nil,
		Lookup: func(id sdk.NodeID) (*nodes.Node, bool) { return dir.get().Lookup(id) }}, log)
	parts.node, parts.dir, parts.self = node, dir, id.ID()
	d.engine.SetPacketHandler(node)
	d.mix = parts
	return nil
}

// run starts the mix listener and the node's loops; call it after the
// engine started (received packets go straight to its workers).
func (p *mixParts) run(ctx context.Context, cfg *config.Mix, log hclog.Logger) error {
	ln, err := p.transport.Listen(cfg.Address, p.node.Receive)
	if err != nil {
		return fmt.Errorf("mix: listen %s: %w", cfg.Address, err)
	}
	p.listener = ln
	go p.node.Run(ctx)
	go p.dir.watch(ctx)
	log.Info("[MIX] mix node listening", "address", ln.Addr().String(), "node", p.self.Short(), "exit", cfg.Exit, "nodes", p.dir.get().Len())
	return nil
}

func (p *mixParts) close() {
	if p == nil {
		return
	}
	if p.listener != nil {
		p.listener.Close()
	}
	if p.transport != nil {
		p.transport.Close()
	}
	if p.hopDelay != nil {
		p.hopDelay.Close()
	}
	if p.frameLog != nil {
		p.frameLog.Close()
	}
	p.consensus.close()
}

// sendQueueChecker refuses new mail (452 4.3.1 at RCPT TO) while the mix
// node's send queue is full: its packets could not leave in time.
type sendQueueChecker struct{ n *mixnet.Node }

func (sendQueueChecker) Name() string { return "mix-send-queue" }

func (c sendQueueChecker) Check(context.Context, *sdk.Message) error { return c.n.SendQueueFull() }

// keyStore adapts *nodes.KeyStore to mixnet.Keys.
type keyStore struct{ ks *nodes.KeyStore }

func (k keyStore) Ensure(now time.Time) error {
	_, err := k.ks.Ensure(now)
	return err
}

func (k keyStore) Keys(now time.Time) []sdk.EpochKey { return k.ks.Keys(now) }

// Dir is absolute: the mixer plugin may not share the core's working
// directory.
func (k keyStore) Dir() string {
	if abs, err := filepath.Abs(k.ks.Dir()); err == nil {
		return abs
	}
	return k.ks.Dir()
}

func (k keyStore) NotAfter(e uint64) (time.Time, bool) { return k.ks.NotAfter(e) }

// liveDirectory is the nodes file, reloaded when it changes on disk. A
// changed file that does not verify is refused (and logged); the last good
// directory stays in use.
type liveDirectory struct {
	path string
	// format is the node's Sphinx format: a nodes file of another is
	// refused, at start and at every reload.
	format mixkey.Kind
	log    hclog.Logger
	cur    atomic.Pointer[nodes.Directory]
	mu     sync.Mutex
	mtime  time.Time
}

func newLiveDirectory(path string, format mixkey.Kind, log hclog.Logger) (*liveDirectory, error) {
	l := &liveDirectory{path: path, format: format, log: log}
	d, err := loadNodesOfFormat(path, format)
	if err != nil {
		return nil, fmt.Errorf("mix: %w", err)
	}
	for _, s := range d.Skipped {
		log.Warn("[MIX] expired descriptor left out", "error", s)
	}
	l.cur.Store(d)
	if fi, err := os.Stat(path); err == nil {
		l.mtime = fi.ModTime()
	}
	return l, nil
}

func (l *liveDirectory) get() *nodes.Directory { return l.cur.Load() }

// Nodes implements mixnet.Directory.
func (l *liveDirectory) Nodes() []sdk.DirectoryNode { return l.get().Nodes(time.Now()) }

func (l *liveDirectory) watch(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.reload()
	}
}

// reload loads the nodes file if its mtime changed: a file that does not
// verify, or states another Sphinx format, is refused and logged, and
// the previous directory stays in use.
func (l *liveDirectory) reload() {
	fi, err := os.Stat(l.path)
	if err != nil || fi.ModTime().Equal(l.mtime) {
		return
	}
	l.mtime = fi.ModTime()
	d, err := loadNodesOfFormat(l.path, l.format)
	if err != nil {
		l.log.Error("[MIX] changed nodes file refused; keeping the previous one", "error", err)
		return
	}
	l.cur.Store(d)
	l.log.Info("[MIX] nodes file reloaded", "nodes", d.Len())
}

var _ pipeline.PacketHandler = (*mixnet.Node)(nil)

// CheckMix checks a mix section beyond the YAML: one of the started
// pipeline stages is the mixer and says the same sphinx_format as
// mix.sphinx_format, the hop delay stage starts and accepts its config,
// the nodes file verifies and is of the node's format, and this node's
// identity key exists (for check-config, which finds what serve would
// refuse).
func CheckMix(ctx context.Context, cfg *config.Config, started []*pluginhost.Stage, log hclog.Logger) error {
	m := cfg.Mix
	if m == nil {
		return nil
	}
	mixIdx, err := mixerStage(cfg, started)
	if err != nil {
		return err
	}
	format, err := checkSphinxFormat(cfg, mixIdx)
	if err != nil {
		return err
	}
	hd, err := startStageOn(ctx, cfg, started[mixIdx].Host(), m.HopDelay, log)
	if err != nil {
		return err
	}
	defer hd.Close()
	if !hd.Info.Has(sdk.KindDelayer) {
		return fmt.Errorf("%s:%d: mix.hop_delay: plugin %s is not a delayer", cfg.Path, m.HopDelay.Line, m.HopDelay.Plugin)
	}
	if m.Directory == nil {
		if _, err := loadNodesOfFormat(m.NodesFile, format); err != nil {
			return nodesFileError(cfg, err)
		}
	}
	if _, err := nodes.LoadIdentity(m.KeysDir); err != nil {
		return fmt.Errorf("mix: %w", err)
	}
	return nil
}

// loadNodesOfFormat is nodes.LoadNodes, refusing a nodes file whose
// sphinx_format is not the node's (nodes.ErrWrongFormat): a node never
// mixes formats.
func loadNodesOfFormat(path string, format mixkey.Kind) (*nodes.Directory, error) {
	d, err := nodes.LoadNodes(path, time.Now())
	if err != nil {
		return nil, err
	}
	if d.Format != format {
		return nil, fmt.Errorf("nodes: %s: %w: the nodes file's sphinx_format is %s, this node's mix.sphinx_format is %s (a network uses one format)",
			path, nodes.ErrWrongFormat, d.Format, format)
	}
	return d, nil
}

// checkSphinxFormat reads mix.sphinx_format and checks that the mixer
// stage's config says the same format (its sphinx_format key, default
// x25519), so that a node whose core and mixer disagree does not start.
func checkSphinxFormat(cfg *config.Config, mixIdx int) (mixkey.Kind, error) {
	format, err := mixkey.ParseKind(cfg.Mix.SphinxFormat)
	if err != nil {
		return 0, fmt.Errorf("%s:%d: mix.sphinx_format: %w", cfg.Path, cfg.Line("mix.sphinx_format"), err)
	}
	st := cfg.Pipeline[mixIdx]
	var sc struct {
		SphinxFormat string `yaml:"sphinx_format"`
	}
	if st.Config.Node != nil {
		if err := st.Config.Node.Decode(&sc); err != nil {
			return 0, fmt.Errorf("%s:%d: pipeline stage %q: %w", cfg.Path, st.Line, st.Name, err)
		}
	}
	if stage, _ := mixkey.ParseKind(sc.SphinxFormat); stage != format {
		return 0, fmt.Errorf("%s:%d: mix.sphinx_format is %s but the mixer stage %q has sphinx_format %s: set both to the network's format",
			cfg.Path, cfg.Line("mix.sphinx_format"), format, st.Name, stage)
	}
	return format, nil
}

// nodesFileError reports a nodes file that cannot be loaded as FILE:LINE
// of mix.nodes_file; a missing one with the commands that create it.
func nodesFileError(cfg *config.Config, err error) error {
	where := fmt.Sprintf("%s:%d: mix.nodes_file", cfg.Path, cfg.Line("mix.nodes_file"))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %s does not exist; create it with this node's own descriptor, then add the other nodes':\n"+
			"  mixmta keygen -c %[3]s\n  mixmta node export -c %[3]s > self.json\n  mixmta nodes add -c %[3]s self.json OTHER-NODE.json...",
			where, cfg.Mix.NodesFile, cfg.Path)
	}
	return fmt.Errorf("%s: %w", where, err)
}
