package mixnet_test

// The harness runs the core's mix node (mixnet.Node) as production does,
// on a real pipeline.Engine over a real queue.Queue (badger in a temp
// dir), with the real sphinx plugin binary as its mixer (pluginhost.Launch
// + Configure, gRPC), and fakes only at the edges: Links record what would
// go on the wire, the hop Delayer returns a fixed delay, and the Directory
// is built from real nodes.KeyStore instances through real signed,
// verified descriptors. Packets addressed to the node under test are made
// by other sphinx plugin processes given a simulated sender's MixState
// (Route over RPC): the core cannot import plugins/sphinx/internal.

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// Geometry and clock of the simulated mixnet: the defaults of mix.epoch,
// mix.grace and the sphinx stage (P = 65536 bytes, r = 3, SPEC.md §2).
const (
	epochLength = time.Hour
	grace       = 10 * time.Minute
	packetSize  = 65536
	sphinxCfg   = `{"hops": 3, "max_hops": 3, "packet_size": 65536}`
)

// Packet layout for the default geometry (plugins/sphinx/SPEC.md §2):
// payload region [0, 65229), α [65229, 65261), β [65261, 65504),
// γ [65504, 65536).
const (
	payloadEnd = 65229
	alphaEnd   = payloadEnd + 32
	betaEnd    = alphaEnd + 3*81
)

// sphinxBin is the sphinx plugin binary, built once by TestMain.
var sphinxBin string

// tmpRoot holds what outlives one test (the benchmark's network).
var tmpRoot string

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "mixnet-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sphinxBin, err = plugintest.BuildTo("github.com/mixmta/mixmta/plugins/sphinx", tmpRoot)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(tmpRoot)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// simNode is one simulated mix node: its key directory with an Ed25519
// identity and its X25519 epoch keys.
type simNode struct {
	name string
	exit bool
	dir  string
	id   *nodes.Identity
	ks   *nodes.KeyStore
}

func (n *simNode) ID() sdk.NodeID { return n.id.ID() }

// newSimNode runs keygen for a node under parent: identity, then the keys
// of the epoch of now and the next one.
func newSimNode(tb testing.TB, parent, name string, exit bool, now time.Time) *simNode {
	tb.Helper()
	dir := filepath.Join(parent, name, "keys")
	id, err := nodes.CreateIdentity(dir)
	if err != nil {
		tb.Fatalf("CreateIdentity %s: %v", name, err)
	}
	ks, err := nodes.Open(dir, epochLength, grace)
	if err != nil {
		tb.Fatalf("KeyStore %s: %v", name, err)
	}
	if _, err := ks.Ensure(now); err != nil {
		tb.Fatalf("Ensure %s: %v", name, err)
	}
	return &simNode{name: name, exit: exit, dir: dir, id: id, ks: ks}
}

// simNet is a simulated mixnet: its nodes and the verified directory made
// from their exported descriptors.
type simNet struct {
	nodes []*simNode
	dir   *nodes.Directory
}

// nodeSpec names a node and whether it is an exit.
type nodeSpec struct {
	name string
	exit bool
}

func newSimNet(tb testing.TB, parent string, now time.Time, specs ...nodeSpec) *simNet {
	tb.Helper()
	net := &simNet{}
	var verified []*nodes.Node
	for i, s := range specs {
		n := newSimNode(tb, parent, s.name, s.exit, now)
		info := nodes.NodeInfo{Name: s.name, MixAddress: fmt.Sprintf("127.0.0.1:%d", 7100+i)}
		if s.exit {
			info.Capabilities = []string{nodes.CapExit}
		}
		d, err := nodes.Export(n.id, n.ks.Keys(now), info, now)
		if err != nil {
			tb.Fatalf("Export %s: %v", s.name, err)
		}
		v, err := nodes.VerifyNode(d, now)
		if err != nil {
			tb.Fatalf("VerifyNode %s: %v", s.name, err)
		}
		verified = append(verified, v)
		net.nodes = append(net.nodes, n)
	}
	d, err := nodes.NewDirectory(verified...)
	if err != nil {
		tb.Fatal(err)
	}
	net.dir = d
	return net
}

func (s *simNet) node(name string) *simNode {
	for _, n := range s.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no simulated node " + name)
}

// stateFor is the MixState a node's core would push at now: its own keys,
// and the directory with exactly the healthy nodes marked healthy.
func (s *simNet) stateFor(self *simNode, now time.Time, healthy ...*simNode) sdk.MixState {
	st := sdk.MixState{Epoch: nodes.Epoch(now, epochLength), Keys: self.ks.Keys(now), Self: self.ID(), KeyDir: self.dir}
	for _, d := range s.dir.Nodes(now) {
		d.Healthy = slices.ContainsFunc(healthy, func(h *simNode) bool { return h.ID() == d.ID })
		st.Nodes = append(st.Nodes, d)
	}
	return st
}

// directory is the node under test's mixnet.Directory: the verified
// descriptors, with keys valid at the wall clock.
type directory struct{ d *nodes.Directory }

func (d directory) Nodes() []sdk.DirectoryNode { return d.d.Nodes(time.Now()) }

// testClock shifts the key store's clock: the Node reads time.Now(), and a
// test that must see a key's grace end cannot wait an hour.
type testClock struct{ off atomic.Int64 }

func (c *testClock) now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

// setNow makes now() return t (moving on with the wall clock).
func (c *testClock) setNow(t time.Time) { c.off.Store(int64(time.Until(t))) }

// clockKeys is mixnet.Keys over a real KeyStore, read at the test clock.
type clockKeys struct {
	ks *nodes.KeyStore
	c  *testClock
}

func (k clockKeys) Ensure(time.Time) error {
	_, err := k.ks.Ensure(k.c.now())
	return err
}

func (k clockKeys) Keys(time.Time) []sdk.EpochKey { return k.ks.Keys(k.c.now()) }

func (k clockKeys) Dir() string { return k.ks.Dir() }

func (k clockKeys) NotAfter(e uint64) (time.Time, bool) { return k.ks.NotAfter(e) }

// sent is one packet handed to the links.
type sent struct {
	to   sdk.NodeID
	data []byte
}

// fakeLinks records every packet sent, per next hop; Probe always
// succeeds. With countOnly it keeps no data (the benchmark).
type fakeLinks struct {
	countOnly bool
	n         atomic.Int64
	mu        sync.Mutex
	sent      []sent
	// done is closed when n reaches target (if target > 0).
	target int64
	done   chan struct{}
	// refuse, if set, is asked before each send: an error fails the send
	// (nothing is recorded). Set it before the node starts.
	refuse func(id sdk.NodeID) error
	// probe, if set, answers Probe (else every probe succeeds).
	probe func(id sdk.NodeID) error
}

func (l *fakeLinks) Send(_ context.Context, id sdk.NodeID, packet []byte) error {
	if l.refuse != nil {
		if err := l.refuse(id); err != nil {
			return err
		}
	}
	if !l.countOnly {
		l.mu.Lock()
		l.sent = append(l.sent, sent{to: id, data: bytes.Clone(packet)})
		l.mu.Unlock()
	}
	if l.n.Add(1) == l.target {
		close(l.done)
	}
	return nil
}

func (l *fakeLinks) Probe(_ context.Context, id sdk.NodeID) error {
	if l.probe != nil {
		return l.probe(id)
	}
	return nil
}

func (l *fakeLinks) all() []sent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sent)
}

// fixedDelay is the hop delay stage: every packet waits d.
type fixedDelay struct{ d time.Duration }

func (f fixedDelay) Delay(_ context.Context, r sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, r.Count)
	for i := range out {
		out[i] = f.d
	}
	return out, nil
}

// recMixer is the real mixer stage with the mix states pushed to it
// recorded, so a test can wait for the state it needs, and its Mix calls
// counted: in flight, and failed because the plugin process died.
type recMixer struct {
	mixnet.Mixer
	mu     sync.Mutex
	states []sdk.MixState

	mixing, crashed atomic.Int64
}

func (r *recMixer) Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error) {
	r.mixing.Add(1)
	defer r.mixing.Add(-1)
	res, err := r.Mixer.Mix(ctx, packet)
	if pluginclient.IsTransport(err) {
		r.crashed.Add(1)
	}
	return res, err
}

func (r *recMixer) SetMixState(ctx context.Context, st sdk.MixState) error {
	err := r.Mixer.SetMixState(ctx, st)
	if err == nil {
		r.mu.Lock()
		r.states = append(r.states, st)
		r.mu.Unlock()
	}
	return err
}

func (r *recMixer) last() (sdk.MixState, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return sdk.MixState{}, false
	}
	return r.states[len(r.states)-1], true
}

// recStage is an in-process pipeline stage after the mixer: a transformer
// or a deliverer that records every message it is given.
type recStage struct {
	mu   sync.Mutex
	msgs []*sdk.Message
	// block, if set before the first message, holds every delivery until
	// it is closed.
	block chan struct{}
}

func (s *recStage) record(m *sdk.Message) {
	if b, err := m.ReadBody(); err == nil && m.Body == nil && m.OpenBody != nil {
		v := *m
		v.Body, v.OpenBody = b, nil
		m = &v
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
}

func (s *recStage) got() []*sdk.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func (s *recStage) Check(context.Context, *sdk.Message) error { return nil }
func (s *recStage) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	s.record(m)
	return nil, nil
}
func (s *recStage) Route(context.Context, *sdk.Message) ([]sdk.Route, error) { return nil, nil }
func (s *recStage) Delay(context.Context, sdk.DelayRequest) ([]time.Duration, error) {
	return nil, nil
}
func (s *recStage) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	if s.block != nil {
		<-s.block
	}
	s.record(m)
	out := make([]sdk.RcptResult, len(m.Envelope.RcptTo))
	for i, r := range m.Envelope.RcptTo {
		out[i] = sdk.RcptResult{Rcpt: r}
	}
	return out, nil
}
func (s *recStage) Healthy() bool { return true }

// testLogger sends log lines to t.Log while the test runs (plugin logs
// arrive asynchronously and may come after it ended).
type testLogger struct {
	mu   sync.Mutex
	tb   testing.TB
	done bool
}

func (w *testLogger) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func newLogger(tb testing.TB, quiet bool) hclog.Logger {
	if quiet {
		return hclog.NewNullLogger()
	}
	w := &testLogger{tb: tb}
	tb.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Info, Output: w})
}

// launchSphinx starts a sphinx plugin process through the core's plugin
// host (launch, handshake, Configure), killed when the test ends.
func launchSphinx(tb testing.TB, stage, config string, log hclog.Logger) *pluginhost.Stage {
	tb.Helper()
	st, err := pluginhost.Launch(pluginhost.Spec{Stage: stage, Plugin: "sphinx", Path: sphinxBin}, log)
	if err != nil {
		tb.Fatalf("launch sphinx: %v", err)
	}
	tb.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Configure(ctx, []byte(config)); err != nil {
		tb.Fatalf("configure sphinx: %v", err)
	}
	return st
}

// peer is a sphinx plugin process acting as another node (a sender, a
// hop before the node under test, an exit reading what it forwarded).
func peer(tb testing.TB, net *simNet, self *simNode, hops int, now time.Time, healthy ...*simNode) *pluginhost.Stage {
	tb.Helper()
	st := launchSphinx(tb, self.name, fmt.Sprintf(`{"hops": %d, "max_hops": 3, "packet_size": %d}`, hops, packetSize), hclog.NewNullLogger())
	if err := st.SetMixState(context.Background(), net.stateFor(self, now, healthy...)); err != nil {
		tb.Fatalf("SetMixState %s: %v", self.name, err)
	}
	return st
}

// testMessage is a message of about size body bytes from a fixed envelope.
func testMessage(size int) *sdk.Message {
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n")
	body := bytes.Repeat(line, size/len(line)+1)[:size]
	return &sdk.Message{
		Envelope: sdk.Envelope{MailFrom: "alice@sender.example", RcptTo: []string{"bob@rcpt.example", "carol@rcpt.example"}, BodyType: sdk.Body8BitMIME},
		Header:   []byte("From: alice@sender.example\r\nTo: bob@rcpt.example\r\nSubject: mixnet test\r\n\r\n"),
		Body:     body,
	}
}

// route makes the packets of m at a sender process; every packet's first
// hop must be first.
func route(tb testing.TB, sender *pluginhost.Stage, m *sdk.Message, first sdk.NodeID) [][]byte {
	tb.Helper()
	routes, err := sender.Route(context.Background(), m)
	if err != nil {
		tb.Fatalf("Route: %v", err)
	}
	var out [][]byte
	for _, r := range routes {
		if r.NextHop != first {
			tb.Fatalf("sender chose first hop %s, want %s", r.NextHop.Short(), first.Short())
		}
		if len(r.Body) != packetSize {
			tb.Fatalf("sender made a packet of %d bytes, want %d", len(r.Body), packetSize)
		}
		out = append(out, r.Body)
	}
	return out
}

// nodeOptions tune the node under test.
type nodeOptions struct {
	hopDelay time.Duration
	// probe is the probe interval: every probe also refreshes the mix
	// state, so a short one makes key changes reach the mixer quickly.
	probe time.Duration
	quiet bool
	// links, if set, replaces the recording links.
	links *fakeLinks
	// epochLength and grace, if set, replace the node's configured epoch
	// length and grace, and keys its key store (a configuration change).
	epochLength, grace time.Duration
	keys               *nodes.KeyStore
	// ackTime is Config.AckTime (0: the default).
	ackTime time.Duration
	// sendRate is Config.SendRate, λ_P (0: 1e-9/s, no tick in a test's
	// lifetime, so the node sends only what the test makes it send).
	sendRate float64
	// blocked is the exit's destination opt-out check (nil: none).
	blocked func(string) bool
	// full is Config.Full (nil: never full).
	full func(pending int64) bool
}

// harness is the node under test: engine, queue, mixer, node.
type harness struct {
	tb    testing.TB
	self  *simNode
	net   *simNet
	opt   nodeOptions
	qdir  string
	clock *testClock
	log   hclog.Logger

	plugin *pluginhost.Stage
	mixer  *recMixer
	links  *fakeLinks
	exit   *recStage // the exit pipeline's first stage (a transformer)
	dlv    *recStage

	q       *queue.Queue
	eng     *pipeline.Engine
	node    *mixnet.Node
	cancel  context.CancelFunc
	runDone chan struct{}
}

// startNode runs self as a mix node of net: pipeline [sphinx router,
// exit transformer, deliverer], ExitStage 1.
func startNode(tb testing.TB, net *simNet, self *simNode, opt nodeOptions) *harness {
	tb.Helper()
	if opt.probe == 0 {
		opt.probe = 50 * time.Millisecond
	}
	h := &harness{tb: tb, self: self, net: net, opt: opt, qdir: filepath.Join(tb.TempDir(), "queue"), clock: &testClock{},
		log: newLogger(tb, opt.quiet), exit: &recStage{}, dlv: &recStage{}, links: opt.links}
	if h.links == nil {
		h.links = &fakeLinks{}
	}
	h.plugin = launchSphinx(tb, "sphinx", sphinxCfg, h.log.Named("plugin"))
	h.mixer = &recMixer{Mixer: h.plugin}
	h.start()
	tb.Cleanup(h.stop)
	return h
}

// start opens the queue and starts engine and node; it returns once the
// mixer has its first mix state.
func (h *harness) start() {
	tb := h.tb
	tb.Helper()
	q, err := queue.Open(h.qdir, queue.Options{Logger: h.log.Named("queue")})
	if err != nil {
		tb.Fatalf("queue: %v", err)
	}
	stages := []pipeline.Stage{
		{Name: "sphinx", Kind: sdk.KindRouter, Needs: sdk.NeedAll, Impl: h.plugin},
		{Name: "exit", Kind: sdk.KindTransformer, Needs: sdk.NeedAll, Impl: h.exit},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: h.dlv},
	}
	eng, err := pipeline.New(q, stages, pipeline.Options{
		Pool:     pipeline.Pool{Window: 10 * time.Millisecond, SendFraction: 1},
		Logger:   h.log.Named("engine"),
		Counters: &stats.Counters{},
	})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := mixnet.Config{
		PacketSize:    packetSize,
		EpochLength:   epochLength,
		Grace:         grace,
		ProbeInterval: h.opt.probe,
		ExitStage:     1,
		AckTime:       h.opt.ackTime,
		SendRate:      h.opt.sendRate,
		Blocked:       h.opt.blocked,
		Full:          h.opt.full,
	}
	if cfg.SendRate == 0 {
		cfg.SendRate = 1e-9
	}
	ks := h.self.ks
	if h.opt.epochLength != 0 {
		cfg.EpochLength, cfg.Grace, ks = h.opt.epochLength, h.opt.grace, h.opt.keys
	}
	node := mixnet.New(cfg, h.self.ID(), eng, h.mixer, fixedDelay{h.opt.hopDelay}, clockKeys{ks, h.clock}, directory{h.net.dir}, h.links, h.log)
	eng.SetPacketHandler(node)
	ctx, cancel := context.WithCancel(context.Background())
	if err := eng.Start(ctx); err != nil {
		cancel()
		tb.Fatal(err)
	}
	h.mixer.mu.Lock()
	n0 := len(h.mixer.states)
	h.mixer.mu.Unlock()
	h.q, h.eng, h.node, h.cancel, h.runDone = q, eng, node, cancel, make(chan struct{})
	go func() { defer close(h.runDone); node.Run(ctx) }()
	eventually(tb, "the first mix state push", func() bool {
		h.mixer.mu.Lock()
		defer h.mixer.mu.Unlock()
		return len(h.mixer.states) > n0
	})
}

// stop ends node and engine and closes the queue (idempotent).
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.runDone
	h.eng.Wait()
	if err := h.q.Close(); err != nil {
		h.tb.Errorf("queue close: %v", err)
	}
	h.cancel = nil
}

// restart is a daemon restart: same queue directory, same keys, same
// (stateless) mixer process, a new engine and node.
func (h *harness) restart() {
	h.tb.Helper()
	h.stop()
	h.start()
}

func (h *harness) receive(from *simNode, pkt []byte) {
	h.tb.Helper()
	if err := h.node.Receive(context.Background(), from.ID(), pkt); err != nil {
		h.tb.Fatalf("Receive: %v", err)
	}
}

// queueLen counts the items in the node's queue.
func (h *harness) queueLen() int {
	n := 0
	if err := h.q.Items(func(*queue.Item) error { n++; return nil }); err != nil {
		h.tb.Fatal(err)
	}
	return n
}

// queueItems returns the items in the node's queue.
func (h *harness) queueItems() []*queue.Item {
	var out []*queue.Item
	if err := h.q.Items(func(it *queue.Item) error { out = append(out, it); return nil }); err != nil {
		h.tb.Fatal(err)
	}
	return out
}

// settled waits until the queue is empty and the engine counts nothing
// queued (every item finished, counts balanced).
func (h *harness) settled() {
	h.tb.Helper()
	eventually(h.tb, "an empty queue", func() bool { return h.queueLen() == 0 && h.eng.Queued() == 0 && h.eng.InFlight() == 0 })
}

// quiet waits long enough for a wrongly forwarded packet to reach the
// links: many scheduler windows.
func quiet() { time.Sleep(200 * time.Millisecond) }

func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mixKeyFiles lists the epochs of the mix-<E>.key files in dir.
func mixKeyFiles(tb testing.TB, dir string) []uint64 {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var out []uint64
	for _, e := range entries {
		var ep uint64
		if _, err := fmt.Sscanf(e.Name(), "mix-%d.key", &ep); err == nil && e.Name() == fmt.Sprintf("mix-%d.key", ep) {
			out = append(out, ep)
		}
	}
	slices.Sort(out)
	return out
}

// privateKeyOf reads the private key of epoch e from its file in dir with
// the standard library (PEM, PKCS#8), as someone who seized the disk would.
func privateKeyOf(tb testing.TB, dir string, e uint64) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("mix-%d.key", e)))
	if err != nil {
		tb.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		tb.Fatalf("mix key file of epoch %d is not PEM", e)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		tb.Fatalf("mix key file of epoch %d: %v", e, err)
	}
	p, ok := k.(*ecdh.PrivateKey)
	if !ok || len(p.Bytes()) != 32 {
		tb.Fatalf("mix key file of epoch %d holds a %T", e, k)
	}
	return p.Bytes()
}
