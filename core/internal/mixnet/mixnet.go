// Package mixnet is the core's side of a Sphinx mix node (docs/mixnet.md):
// packets received on the mix transport are queued durably before they are
// acknowledged, unwrapped by the mixer stage, checked against the replay
// tags of their epoch key, delayed by the hop delay stage, and released
// through the scheduler's pool to the next hop; exit fragments are kept in
// the queue until their message is complete and then re-enter the pipeline
// after the router stage. It also keeps node health (link probes, loops),
// sends cover traffic at Poisson rates, and pushes keys and directory to
// the mixer at every epoch change.
package mixnet

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Mixer is the mixer stage (a *pluginhost.Stage).
type Mixer interface {
	SetMixState(ctx context.Context, st sdk.MixState) error
	Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error)
	Cover(ctx context.Context, k sdk.CoverKind) (*sdk.Packet, error)
	Assemble(ctx context.Context, data []byte) (*sdk.Message, error)
}

// Delayer samples hop delays (a *pluginhost.Stage).
type Delayer interface {
	Delay(ctx context.Context, req sdk.DelayRequest) ([]time.Duration, error)
}

// Keys is this node's key store.
type Keys interface {
	// Ensure creates missing keys and deletes expired ones.
	Ensure(now time.Time) error
	// Keys returns this node's valid epoch keys (with private halves).
	Keys(now time.Time) []sdk.EpochKey
}

// Directory is the verified nodes file.
type Directory interface {
	// Nodes returns every node (Healthy unset).
	Nodes() []sdk.DirectoryNode
}

// Links sends packets to other nodes.
type Links interface {
	// Send delivers one packet to node id and returns after its ack.
	Send(ctx context.Context, id sdk.NodeID, packet []byte) error
	// Probe checks that node id answers (a TLS handshake).
	Probe(ctx context.Context, id sdk.NodeID) error
}

// Config tunes a Node. Zero values take the defaults in brackets.
type Config struct {
	// PacketSize in bytes (65536).
	PacketSize int
	// EpochLength (1 h) and Grace (10 min): a key serves packets until its
	// epoch ends plus Grace; replay tags live as long.
	EpochLength, Grace time.Duration
	// ProbeInterval between link probes of every node (30 s).
	ProbeInterval time.Duration
	// LoopTimeout: a loop not back by then counts against its path (2 min).
	LoopTimeout time.Duration
	// DropRate and LoopRate: cover packets per second, Poisson (0: none).
	DropRate, LoopRate float64
	// FragmentTTL: an incomplete message is dropped after this (24 h).
	FragmentTTL time.Duration
	// MessageIDTTL: how long the exit remembers message ids (24 h).
	MessageIDTTL time.Duration
	// ExitStage is the pipeline stage index an assembled message resumes at.
	ExitStage int
	// Blocked reports whether an assembled message must not be delivered
	// to a recipient (the exit's destination opt-out list); nil blocks
	// none. A message left without recipients is dropped.
	Blocked func(rcpt string) bool
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.PacketSize <= 0 {
		c.PacketSize = 65536
	}
	def(&c.EpochLength, time.Hour)
	def(&c.Grace, 10*time.Minute)
	def(&c.ProbeInterval, 30*time.Second)
	def(&c.LoopTimeout, 2*time.Minute)
	def(&c.FragmentTTL, 24*time.Hour)
	def(&c.MessageIDTTL, 24*time.Hour)
}

// Stats counts a mix node's events since start.
type Stats struct {
	Received, Forwarded, Exited, Replays, Dropped, CoverSent, CoverDropped atomic.Int64
	LoopsSent, LoopsBack, LoopsLost, Assembled, Duplicates                 atomic.Int64
}

// Node is the mixnet side of one mixmta daemon.
type Node struct {
	cfg    Config
	self   sdk.NodeID
	eng    *pipeline.Engine
	mixer  Mixer
	delay  Delayer
	keys   Keys
	dir    Directory
	links  Links
	log    hclog.Logger
	Stats  Stats
	health *health

	mu        sync.Mutex
	fragments map[queue.ID]map[int]*queue.Item // message id -> index -> item
	loops     map[[16]byte]loop
	lastState string
	// refreshMu serializes refresh: the epoch ticker, the probe loop and
	// the sweep all call it, and an older state must never be pushed after
	// a newer one.
	refreshMu sync.Mutex
}

type loop struct {
	sent time.Time
	path []sdk.NodeID
}

// New builds a mix node. Start it after the engine has started.
func New(cfg Config, self sdk.NodeID, eng *pipeline.Engine, mixer Mixer, delay Delayer, keys Keys, dir Directory, links Links, log hclog.Logger) *Node {
	cfg.defaults()
	return &Node{cfg: cfg, self: self, eng: eng, mixer: mixer, delay: delay, keys: keys, dir: dir, links: links,
		log: log.Named("mix"), health: newHealth(), fragments: map[queue.ID]map[int]*queue.Item{}, loops: map[[16]byte]loop{}}
}

// Run keeps keys, mix state, health and cover traffic going until ctx ends.
func (n *Node) Run(ctx context.Context) {
	n.refresh(ctx, true)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		n.every(ctx, min(n.cfg.EpochLength/10, 5*time.Second), func() { n.refresh(ctx, false) })
	}()
	go func() { defer wg.Done(); n.probeLoop(ctx) }()
	go func() { defer wg.Done(); n.sweepLoop(ctx) }()
	for _, c := range []struct {
		kind sdk.CoverKind
		rate float64
	}{{sdk.CoverDrop, n.cfg.DropRate}, {sdk.CoverLoop, n.cfg.LoopRate}} {
		if c.rate > 0 {
			wg.Add(1)
			go func() { defer wg.Done(); n.coverLoop(ctx, c.kind, c.rate) }()
		}
	}
	wg.Wait()
}

func (n *Node) every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// refresh pushes the mix state when it changed, then rotates keys (a key
// leaves the mixer's memory before its file is deleted), and pushes again
// when rotation changed the keys.
func (n *Node) refresh(ctx context.Context, force bool) {
	n.refreshMu.Lock()
	defer n.refreshMu.Unlock()
	now := time.Now()
	n.push(ctx, now, force)
	if err := n.keys.Ensure(now); err != nil {
		n.log.Error("[MIX] key rotation failed", "error", err)
	}
	n.push(ctx, now, false)
}

func (n *Node) push(ctx context.Context, now time.Time, force bool) {
	st := sdk.MixState{Epoch: uint64(now.Unix()) / uint64(n.cfg.EpochLength.Seconds()), Keys: n.keys.Keys(now), Self: n.self}
	for _, d := range n.dir.Nodes() {
		d.Healthy = d.ID == n.self || n.health.healthy(d.ID)
		st.Nodes = append(st.Nodes, d)
	}
	sig := stateSignature(st)
	n.mu.Lock()
	changed := sig != n.lastState
	n.lastState = sig
	n.mu.Unlock()
	if !changed && !force {
		return
	}
	if err := n.mixer.SetMixState(ctx, st); err != nil {
		n.log.Error("[MIX] cannot push mix state", "error", err)
		n.mu.Lock()
		n.lastState = "" // try again next time
		n.mu.Unlock()
		return
	}
	healthy := 0
	for _, d := range st.Nodes {
		if d.Healthy && d.ID != n.self {
			healthy++
		}
	}
	n.log.Info("[HEALTH] mix state pushed", "epoch", st.Epoch, "keys", len(st.Keys), "healthy_nodes", healthy, "nodes", len(st.Nodes)-1)
}

// stateSignature is a digest of everything in a MixState the mixer acts
// on: epoch, own keys, and every node's id, flags and public keys.
func stateSignature(st sdk.MixState) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d|", st.Epoch)
	for _, k := range st.Keys {
		fmt.Fprintf(h, "k%d:%x:%d|", k.Epoch, k.Public, k.NotAfter.Unix())
	}
	for _, d := range st.Nodes {
		fmt.Fprintf(h, "n%x:%v:%v:%q|", d.ID[:], d.Healthy, d.Exit, d.Capabilities)
		for _, k := range d.Keys {
			fmt.Fprintf(h, "%d:%x:%d,", k.Epoch, k.Public, k.NotAfter.Unix())
		}
	}
	return string(h.Sum(nil))
}

// Receive is the transport's handler. The packet is unwrapped at once and
// its outcome (a forward item, a fragment, or nothing for a drop, a loop or
// a replay) is stored with its replay tag in one synced transaction; only
// when the mixer or the hop delay cannot answer now is the raw packet
// stored instead, to be unwrapped later. Either way Receive returns, and
// the transport acknowledges, only after the packet is on disk: one queue
// write per packet instead of storing, reading and deleting it first.
func (n *Node) Receive(ctx context.Context, from sdk.NodeID, packet []byte) error {
	if len(packet) != n.cfg.PacketSize {
		n.Stats.Dropped.Add(1)
		return fmt.Errorf("packet of %d bytes, want %d", len(packet), n.cfg.PacketSize)
	}
	n.Stats.Received.Add(1)
	res, err := n.mixer.Mix(ctx, packet)
	if err == nil {
		done, err := n.apply(ctx, nil, res)
		if done || err != nil {
			return err // a queue error nacks: the sender tries again
		}
	} else if sdk.IsPermanent(err) {
		n.dropped(err)
		return nil
	}
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
	if err := n.eng.Queue().Put(it, packet); err != nil {
		return err
	}
	n.eng.Forget(-1)
	n.eng.Enqueue(it)
	return nil
}

func (n *Node) dropped(err error) {
	n.Stats.Dropped.Add(1)
	n.eng.Counters().Dropped.Add(1)
	n.log.Info("[MIX] packet dropped", "reason", sdk.AsError(err).Message)
}

// Process implements pipeline.PacketHandler.
func (n *Node) Process(ctx context.Context, it *queue.Item, released bool) {
	var err error
	switch it.Kind {
	case queue.KindPacketIn:
		err = n.unwrap(ctx, it)
	case queue.KindPacketOut:
		err = n.send(ctx, it, released)
	case queue.KindFragment:
		err = n.fragment(ctx, it)
	default:
		err = fmt.Errorf("unknown item kind %q", it.Kind)
	}
	if err != nil {
		n.log.Error("[MIX] item failed; it resumes at restart", "item", it.ID.String(), "kind", it.Kind, "error", err)
	}
}

func epochKey(epoch uint64, tag [32]byte) []byte {
	k := binary.BigEndian.AppendUint64(nil, epoch)
	return append(k, tag[:]...)
}

// tagTTL is how long a replay tag of epoch e must be kept: until the key
// of e is deleted (end of epoch + grace).
func (n *Node) tagTTL(epoch uint64) time.Duration {
	end := time.Unix(int64(epoch+1)*int64(n.cfg.EpochLength.Seconds()), 0).Add(n.cfg.Grace)
	return max(time.Until(end), time.Minute)
}

// unwrap runs the mixer on a packet stored by Receive (the mixer could not
// answer then) and applies the result.
func (n *Node) unwrap(ctx context.Context, it *queue.Item) error {
	packet, err := n.eng.Queue().Blob(it.Body)
	if err != nil {
		return err
	}
	res, err := n.mixer.Mix(ctx, packet)
	if err != nil {
		if sdk.IsPermanent(err) {
			n.dropped(err)
			return n.finish(it)
		}
		return n.retry(it)
	}
	done, err := n.apply(ctx, it, res)
	if err == nil && !done {
		return n.retry(it)
	}
	return err
}

// apply turns a mix result, in one queue transaction with its replay tag,
// into a forward item, a fragment, or nothing (drop, loop back, replay),
// deleting the stored packet in (nil for a packet just received, whose
// transaction is then synced before returning). done is false when the
// hop delay cannot be sampled now: nothing was changed.
func (n *Node) apply(ctx context.Context, in *queue.Item, res *sdk.MixResult) (done bool, err error) {
	q := n.eng.Queue()
	received := time.Now()
	if in != nil {
		received = in.Received
	}
	var out *queue.Item
	var outData []byte
	switch res.Action {
	case sdk.MixForward:
		if len(res.Packet) != n.cfg.PacketSize {
			n.dropped(sdk.Permanent(554, "6.0", "mixer returned a packet of %d bytes", len(res.Packet)))
			return true, n.finishIf(in)
		}
		ds, err := n.delay.Delay(ctx, sdk.DelayRequest{Size: int64(len(res.Packet)), Count: 1})
		if err != nil || len(ds) != 1 {
			return false, nil
		}
		out = &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: res.NextHop,
			Received: received, SendAfter: time.Now().Add(ds[0]), Waiting: true, Deliverer: -1}
		outData = res.Packet
	case sdk.MixExit:
		if f := res.Fragment; f != nil {
			if f.Count < 1 || f.Index < 0 || f.Index >= f.Count {
				n.dropped(sdk.Permanent(554, "6.0", "fragment %d of %d", f.Index, f.Count))
				return true, n.finishIf(in)
			}
			out = &queue.Item{ID: queue.NewID(), Msg: queue.ID(f.MessageID), Kind: queue.KindFragment,
				FragIndex: f.Index, FragCount: f.Count, Received: time.Now(), Deliverer: -1}
			outData = f.Data
		}
	}
	replay := false
	err = q.Do(func(tx *queue.Tx) error {
		seen, err := tx.Mark(epochKey(res.Epoch, res.ReplayTag), n.tagTTL(res.Epoch))
		if err != nil {
			return err
		}
		replay = seen
		if !seen && out != nil {
			if err := tx.Put(out, outData); err != nil {
				return err
			}
		}
		if in != nil {
			return tx.Delete(in)
		}
		return nil
	})
	if err == nil && in == nil {
		err = q.Sync()
	}
	if err != nil {
		return true, err
	}
	delta := 0 // items added minus items deleted, for the queued gauge
	if in != nil {
		delta--
	}
	if !replay && out != nil {
		delta++
	}
	n.eng.Forget(-delta)
	switch {
	case replay:
		n.Stats.Replays.Add(1)
		n.eng.Counters().Dropped.Add(1)
		n.log.Info("[MIX] replayed packet dropped", "epoch", res.Epoch)
	case res.Action == sdk.MixForward:
		n.Stats.Forwarded.Add(1)
		n.eng.Hold(out)
	case res.Action == sdk.MixDrop:
		n.Stats.CoverDropped.Add(1)
	case res.LoopID != ([16]byte{}):
		n.loopBack(res.LoopID)
	case out != nil:
		n.Stats.Exited.Add(1)
		n.addFragment(ctx, out)
	}
	return true, nil
}

// finishIf deletes a stored packet, if there is one.
func (n *Node) finishIf(in *queue.Item) error {
	if in == nil {
		return nil
	}
	return n.finish(in)
}

func (n *Node) finish(it *queue.Item) error { return n.eng.Done(it) }

func (n *Node) retry(it *queue.Item) error {
	ok, err := n.eng.RetryPacket(it)
	if err == nil && !ok {
		n.Stats.Dropped.Add(1)
		return n.eng.Done(it)
	}
	return err
}

// send hands a released packet to the transport.
func (n *Node) send(ctx context.Context, it *queue.Item, released bool) error {
	if !released {
		if it.SendAfter.IsZero() {
			it.SendAfter = time.Now()
		}
		return n.eng.Park(it)
	}
	packet, err := n.eng.Queue().Blob(it.Body)
	if err != nil {
		return err
	}
	if err := n.links.Send(ctx, it.NextHop, packet); err != nil {
		n.log.Info("[MIX] send failed, will retry", "next", it.NextHop.Short(), "attempt", it.Attempts+1)
		n.health.fail(it.NextHop)
		return n.retry(it)
	}
	return n.eng.Done(it)
}

// fragment re-indexes a fragment item loaded at start.
func (n *Node) fragment(ctx context.Context, it *queue.Item) error {
	if time.Since(it.Received) > n.cfg.FragmentTTL {
		n.Stats.Dropped.Add(1)
		return n.eng.Done(it)
	}
	n.addFragment(ctx, it)
	return nil
}

// addFragment indexes a stored fragment and assembles its message when
// every fragment is there.
func (n *Node) addFragment(ctx context.Context, it *queue.Item) {
	n.mu.Lock()
	set := n.fragments[it.Msg]
	if set == nil {
		set = map[int]*queue.Item{}
		n.fragments[it.Msg] = set
	}
	if old, dup := set[it.FragIndex]; dup && old.ID != it.ID {
		// The same fragment twice (by another path): keep the first.
		n.mu.Unlock()
		n.Stats.Duplicates.Add(1)
		_ = n.eng.Done(it)
		return
	}
	set[it.FragIndex] = it
	complete := len(set) == it.FragCount
	var parts []*queue.Item
	if complete {
		delete(n.fragments, it.Msg)
		for i := 0; i < it.FragCount; i++ {
			p, ok := set[i]
			if !ok || p.FragCount != it.FragCount {
				complete = false
				break
			}
			parts = append(parts, p)
		}
		if !complete { // inconsistent counts: keep waiting, sweep drops them
			n.fragments[it.Msg] = set
		}
	}
	n.mu.Unlock()
	if complete {
		if err := n.assemble(ctx, parts); err != nil {
			n.log.Error("[MIX] assembly failed; fragments kept, retrying in 10s", "error", err)
			n.mu.Lock()
			n.fragments[it.Msg] = set
			n.mu.Unlock()
			// Try again later: re-adding the last fragment re-checks the set.
			time.AfterFunc(10*time.Second, func() {
				if ctx.Err() == nil {
					n.mu.Lock()
					delete(n.fragments[it.Msg], it.FragIndex)
					n.mu.Unlock()
					n.addFragment(ctx, it)
				}
			})
		}
	}
}

// assemble turns a complete fragment set into a message item that resumes
// the pipeline at the exit stage, in one transaction that also records the
// message id (a duplicate message is dropped).
func (n *Node) assemble(ctx context.Context, parts []*queue.Item) error {
	q := n.eng.Queue()
	var data []byte
	for _, p := range parts {
		b, err := q.Blob(p.Body)
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	msg, err := n.mixer.Assemble(ctx, data)
	if err == nil && n.cfg.Blocked != nil {
		var keep []string
		for _, r := range msg.Envelope.RcptTo {
			if !n.cfg.Blocked(r) {
				keep = append(keep, r)
			}
		}
		if len(keep) < len(msg.Envelope.RcptTo) {
			n.log.Info("[MIX] recipients opted out at exit; not delivered to them", "opted_out", len(msg.Envelope.RcptTo)-len(keep), "left", len(keep))
			msg.Envelope.RcptTo = keep
			if len(keep) == 0 {
				err = sdk.Permanent(550, "7.1", "every recipient has opted out of anonymous mail")
			}
		}
	}
	if err != nil {
		if sdk.IsPermanent(err) {
			n.Stats.Dropped.Add(1)
			n.eng.Counters().Dropped.Add(1)
			n.log.Info("[MIX] reassembled message malformed or without recipients; dropped", "fragments", len(parts))
			err := q.Do(func(tx *queue.Tx) error {
				for _, p := range parts {
					if err := tx.Delete(p); err != nil {
						return err
					}
				}
				return nil
			})
			if err == nil {
				n.eng.Forget(len(parts))
			}
			return err
		}
		return err
	}
	it := &queue.Item{ID: queue.NewID(), Envelope: msg.Envelope, Stage: n.cfg.ExitStage, Received: time.Now(), Deliverer: -1}
	it.Msg = it.ID
	dup := false
	err = q.Do(func(tx *queue.Tx) error {
		seen, err := tx.Mark(append([]byte("msgid/"), parts[0].Msg[:]...), n.cfg.MessageIDTTL)
		if err != nil {
			return err
		}
		dup = seen
		for _, p := range parts {
			if err := tx.Delete(p); err != nil {
				return err
			}
		}
		if seen {
			return nil
		}
		return tx.Insert(it, msg.Header, msg.Body)
	})
	if err != nil {
		return err
	}
	n.eng.Forget(len(parts))
	if dup {
		n.Stats.Duplicates.Add(1)
		n.log.Info("[MIX] duplicate message dropped at exit")
		return nil
	}
	n.Stats.Assembled.Add(1)
	n.log.Info("[MIX] message assembled", "item", it.ID.String(), "fragments", len(parts), "size", it.Size)
	n.eng.Forget(-1)
	n.eng.Enqueue(it)
	return nil
}

// coverLoop sends cover packets of kind k with exponential inter-arrival
// times of mean 1/rate seconds (a Poisson process, Loopix §4.2).
func (n *Node) coverLoop(ctx context.Context, k sdk.CoverKind, rate float64) {
	for {
		wait := time.Duration(expSample(1/rate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := n.sendCover(ctx, k); err != nil {
			n.log.Debug("[MIX] no cover packet", "error", err)
		}
	}
}

func (n *Node) sendCover(ctx context.Context, k sdk.CoverKind) error {
	p, err := n.mixer.Cover(ctx, k)
	if err != nil {
		return err
	}
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: p.NextHop,
		Received: time.Now(), SendAfter: time.Now(), Waiting: true, Deliverer: -1}
	if err := n.eng.Queue().Do(func(tx *queue.Tx) error { return tx.Put(it, p.Data) }); err != nil {
		return err
	}
	n.eng.Forget(-1)
	n.Stats.CoverSent.Add(1)
	if k == sdk.CoverLoop {
		n.Stats.LoopsSent.Add(1)
		n.mu.Lock()
		n.loops[p.LoopID] = loop{sent: time.Now(), path: p.Path}
		n.mu.Unlock()
	}
	n.eng.Hold(it)
	return nil
}

func (n *Node) loopBack(id [16]byte) {
	n.mu.Lock()
	l, ok := n.loops[id]
	delete(n.loops, id)
	n.mu.Unlock()
	if !ok {
		return // sent before a restart: nothing to credit
	}
	n.Stats.LoopsBack.Add(1)
	for _, h := range l.path {
		n.health.ok(h)
	}
}

// sweepLoop expires lost loops and stale fragments.
func (n *Node) sweepLoop(ctx context.Context) {
	n.every(ctx, max(n.cfg.LoopTimeout/4, time.Second), func() {
		now := time.Now()
		var lost [][]sdk.NodeID
		n.mu.Lock()
		for id, l := range n.loops {
			if now.Sub(l.sent) > n.cfg.LoopTimeout {
				lost = append(lost, l.path)
				delete(n.loops, id)
			}
		}
		var stale []*queue.Item
		for msg, set := range n.fragments {
			for _, it := range set {
				if now.Sub(it.Received) > n.cfg.FragmentTTL {
					for _, p := range set {
						stale = append(stale, p)
					}
					delete(n.fragments, msg)
					break
				}
			}
		}
		n.mu.Unlock()
		for _, path := range lost {
			n.Stats.LoopsLost.Add(1)
			for _, h := range path {
				if h != n.self {
					n.health.lostLoop(h)
				}
			}
		}
		for _, it := range stale {
			n.Stats.Dropped.Add(1)
			_ = n.eng.Done(it)
		}
		if len(lost) > 0 {
			n.refresh(ctx, false)
		}
	})
}

// probeLoop dials every other node once per probe interval.
func (n *Node) probeLoop(ctx context.Context) {
	probe := func() {
		var wg sync.WaitGroup
		for _, d := range n.dir.Nodes() {
			if d.ID == n.self {
				continue
			}
			wg.Add(1)
			go func(id sdk.NodeID) {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if err := n.links.Probe(pctx, id); err != nil {
					n.health.fail(id)
				} else {
					n.health.probeOK(id)
				}
			}(d.ID)
		}
		wg.Wait()
		n.refresh(ctx, false)
	}
	probe()
	n.every(ctx, n.cfg.ProbeInterval, probe)
}

// HealthyNodes returns the number of other nodes now considered healthy.
func (n *Node) HealthyNodes() int {
	c := 0
	for _, d := range n.dir.Nodes() {
		if d.ID != n.self && n.health.healthy(d.ID) {
			c++
		}
	}
	return c
}

// Fragments returns the number of incomplete messages held at this exit.
func (n *Node) Fragments() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.fragments)
}

// StatsLine formats fog's mix fields for the [STATS] line.
func (n *Node) StatsLine() string {
	s := &n.Stats
	c := n.eng.Counters()
	return fmt.Sprintf("sphinx_messages=%d sphinx_packets=%d mix_received=%d mix_forwarded=%d exit=%d assembled=%d replays=%d mix_dropped=%d cover_sent=%d cover_dropped=%d loops=%d/%d/%d healthy_nodes=%d",
		c.SphinxMessages.Load(), c.SphinxPackets.Load(), s.Received.Load(), s.Forwarded.Load(), s.Exited.Load(), s.Assembled.Load(), s.Replays.Load(), s.Dropped.Load(),
		s.CoverSent.Load(), s.CoverDropped.Load(), s.LoopsSent.Load(), s.LoopsBack.Load(), s.LoopsLost.Load(), n.HealthyNodes())
}

// health tracks other nodes: unhealthy after a failed probe or send until a
// probe succeeds; unhealthy after loopFailLimit lost loops on paths through
// it without a returned loop in between.
type health struct {
	mu    sync.Mutex
	nodes map[sdk.NodeID]*nodeHealth
}

type nodeHealth struct {
	probeOK   bool
	lostLoops int
}

const loopFailLimit = 3

func newHealth() *health { return &health{nodes: map[sdk.NodeID]*nodeHealth{}} }

func (h *health) get(id sdk.NodeID) *nodeHealth {
	nh := h.nodes[id]
	if nh == nil {
		nh = &nodeHealth{}
		h.nodes[id] = nh
	}
	return nh
}

func (h *health) healthy(id sdk.NodeID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	nh := h.get(id)
	return nh.probeOK && nh.lostLoops < loopFailLimit
}

func (h *health) probeOK(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).probeOK = true
	h.mu.Unlock()
}

func (h *health) fail(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).probeOK = false
	h.mu.Unlock()
}

func (h *health) ok(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).lostLoops = 0
	h.mu.Unlock()
}

func (h *health) lostLoop(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).lostLoops++
	h.mu.Unlock()
}

// expSample draws Exp(mean) from crypto/rand.
func expSample(mean float64) float64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	u := (float64(binary.LittleEndian.Uint64(b[:])>>11) + 0.5) / (1 << 53)
	return -mean * math.Log(u)
}
