package simulate

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Sampler draws one delay, in seconds.
type Sampler interface {
	Next() (float64, error)
}

// Pool is a node's timed dynamic pool (Mixmaster's; what the core's
// scheduler does): once per Window seconds, when the pool holds n > MinPool
// items, k = min(n-MinPool, ceil(n*SendFraction)) of them chosen uniformly
// at random leave together. Window 0 means no pool: an item leaves as soon
// as its delay has passed.
type Pool struct {
	Window       float64
	MinPool      int
	SendFraction float64
}

func (p Pool) batch(n int) int {
	k := n - p.MinPool
	if k <= 0 {
		return 0
	}
	if p.SendFraction > 0 && p.SendFraction < 1 {
		k = min(k, int(math.Ceil(float64(n)*p.SendFraction)))
	}
	return k
}

// Network is the configuration of every node of the simulated mixnet (all
// nodes run the same profile). Rates are per node, in packets per second.
type Network struct {
	// Nodes in the network (> Hops: a path never includes the sender's
	// own node). Exits: nodes 0..Exits-1 can be the last hop (>= 2, since
	// a message never leaves through its own entry).
	Nodes, Exits int
	// Hops: nodes each packet crosses, the last one an exit (>= 1).
	Hops int
	// MsgDelay is the message-level delay at the entry (the pipeline's
	// delay stage), HopDelay the per-hop delay of every forwarded packet,
	// ExitDelay the delay of a reassembled message at the exit. nil = 0.
	MsgDelay, HopDelay, ExitDelay Sampler
	// Pool is the timed pool every node runs: messages at the entry after
	// their delay, forwarded packets after theirs, and reassembled messages
	// at the exit before delivery all wait in it, as in the core's
	// scheduler.
	Pool Pool
	// SendRate is the Loopix sending rate λ_P: a node sends its own new
	// packets only on the ticks of a Poisson process of this rate, the next
	// queued packet or a drop cover packet when none is queued (Loopix §4).
	// 0 means no discipline: own packets leave as soon as the message is
	// released, and cover is added on top.
	SendRate float64
	// DropRate and LoopRate: independent Poisson streams of drop and loop
	// cover packets.
	DropRate, LoopRate float64
	// SizeClasses (bytes, ascending): a message is padded to the smallest
	// class that holds it (a message above the largest is padded to a
	// multiple of it); nil: no padding.
	SizeClasses []int
	// FragmentPayload is the message bytes one packet carries (> 0).
	FragmentPayload int
	// SharedPath: all fragments of a message take one path; otherwise each
	// fragment takes a path of its own to the message's exit.
	SharedPath bool
}

// Workload is what the users of the network do.
type Workload struct {
	// UsersPerNode: each user submits to one node, its entry.
	UsersPerNode int
	// Rate: messages per user per second, a Poisson process.
	Rate float64
	// Size draws a message size in bytes.
	Size func(r *rand.Rand) int
	// Duration of the run and Warmup (not scored), seconds. Until, if
	// set, ends submissions earlier, so that the run drains.
	Duration, Warmup, Until float64
	// Seed makes a run repeatable.
	Seed uint64
	// OneEach: every user submits exactly one message, at a uniform time
	// in the run, instead of a Poisson stream of Rate. The submissions at a
	// node are then a Poisson process conditioned on its count, and every
	// message has a sender of its own: the anonymity set is the set of
	// messages, as in the analyses of a single mix.
	OneEach bool
}

// Counts summarizes a run.
type Counts struct {
	Messages, Delivered int
	// RealPackets and CoverPackets count packets created; LinkEvents every
	// packet on every link.
	RealPackets, CoverPackets, LinkEvents int
	// Latency of each delivered message (seconds, submission to delivery),
	// in delivery order.
	Latency []float64
	// MaxSendQueue is the longest any node's send queue grew (packets).
	MaxSendQueue int
}

func (n Network) validate() error {
	switch {
	case n.Hops < 1:
		return errors.New("simulate: hops must be >= 1")
	case n.Nodes < n.Hops+1:
		return fmt.Errorf("simulate: %d nodes cannot give %d-hop paths that avoid the sender's node (need >= %d)", n.Nodes, n.Hops, n.Hops+1)
	case n.Exits < 2 || n.Exits > n.Nodes:
		// The sender's own node is never its exit: with one exit, its
		// users could not send.
		return fmt.Errorf("simulate: exits must be 2..%d, got %d", n.Nodes, n.Exits)
	case n.FragmentPayload <= 0:
		return errors.New("simulate: fragment payload must be > 0")
	case n.SendRate < 0 || n.DropRate < 0 || n.LoopRate < 0:
		return errors.New("simulate: rates must be >= 0")
	case n.Pool.Window < 0:
		return errors.New("simulate: pool window must be >= 0")
	}
	return nil
}

// Fragments returns how many packets a message of size bytes becomes.
func (n Network) Fragments(size int) int {
	padded := size
	if len(n.SizeClasses) > 0 {
		largest := n.SizeClasses[len(n.SizeClasses)-1]
		padded = 0
		for _, c := range n.SizeClasses {
			if size <= c {
				padded = c
				break
			}
		}
		if padded == 0 {
			padded = (size + largest - 1) / largest * largest
		}
	}
	return max(1, (padded+n.FragmentPayload-1)/n.FragmentPayload)
}

type pktKind uint8

const (
	kindReal pktKind = iota
	kindDrop
	kindLoop
	kindMsg     // a whole message waiting at its entry, not yet packets
	kindExitMsg // a reassembled message waiting at its exit
)

type packet struct {
	kind  pktKind
	msg   int32
	path  []int32 // nodes still to visit, path[0] next
	cause int32   // event that brought it into the node it is at
}

type message struct {
	entry, exit int32
	frags       int
	arrived     int
	submitted   float64
	submitEv    int32
}

type evKind uint8

const (
	evSubmit evKind = iota
	evMsgDue
	evHopDue
	evFlush
	evTick
	evDrop
	evLoop
	evExitDue
)

type simEvent struct {
	t    float64
	kind evKind
	node int32
	user int32
	pkt  *packet
	msg  int32
}

type eventHeap []simEvent

func (h eventHeap) Len() int           { return len(h) }
func (h eventHeap) Less(i, j int) bool { return h[i].t < h[j].t }
func (h eventHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)        { *h = append(*h, x.(simEvent)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

type sim struct {
	net   Network
	work  Workload
	rng   *rand.Rand
	q     eventHeap
	tr    *Trace
	cnt   Counts
	msgs  []message
	pools [][]*packet
	sendQ [][]*packet
	err   error
}

// Run simulates the network under the workload and returns the trace an
// observer of every link records, with the ground truth Analyze needs for
// compromised nodes. Errors: an invalid Network or Workload, or a failed
// Sampler.
func Run(net Network, work Workload) (*Trace, Counts, error) {
	if err := net.validate(); err != nil {
		return nil, Counts{}, err
	}
	if work.UsersPerNode < 1 || work.Rate < 0 || work.Duration <= 0 || work.Size == nil {
		return nil, Counts{}, errors.New("simulate: workload needs users >= 1, rate >= 0, duration > 0 and a size distribution")
	}
	s := &sim{
		net:   net,
		work:  work,
		rng:   rand.New(rand.NewPCG(work.Seed, work.Seed^0x9e3779b97f4a7c15)),
		pools: make([][]*packet, net.Nodes),
		sendQ: make([][]*packet, net.Nodes),
		tr: &Trace{
			Users:     net.Nodes * work.UsersPerNode,
			Nodes:     net.Nodes,
			Duration:  work.Duration,
			Fragments: map[int32][]int32{},
			Warmup:    work.Warmup,
		},
	}
	for n := range int32(net.Nodes) {
		for u := range int32(work.UsersPerNode) {
			user := n*int32(work.UsersPerNode) + u
			switch {
			case work.OneEach:
				s.push(simEvent{t: s.rng.Float64() * work.Duration, kind: evSubmit, node: n, user: user})
			case work.Rate > 0:
				s.push(simEvent{t: s.rng.ExpFloat64() / work.Rate, kind: evSubmit, node: n, user: user})
			}
		}
		if net.Pool.Window > 0 {
			s.push(simEvent{t: s.rng.Float64() * net.Pool.Window, kind: evFlush, node: n})
		}
		s.every(evTick, n, net.SendRate, 0)
		s.every(evDrop, n, net.DropRate, 0)
		s.every(evLoop, n, net.LoopRate, 0)
	}
	for s.q.Len() > 0 && s.err == nil {
		e := heap.Pop(&s.q).(simEvent)
		if e.t > work.Duration {
			break
		}
		s.handle(e)
	}
	if s.err != nil {
		return nil, Counts{}, s.err
	}
	return s.tr, s.cnt, nil
}

func (s *sim) push(e simEvent) { heap.Push(&s.q, e) }

// every schedules the next event of a Poisson process of the given rate.
func (s *sim) every(k evKind, node int32, rate, now float64) {
	if rate > 0 {
		s.push(simEvent{t: now + s.rng.ExpFloat64()/rate, kind: k, node: node})
	}
}

func (s *sim) delay(sm Sampler) float64 {
	if sm == nil {
		return 0
	}
	d, err := sm.Next()
	if err != nil && s.err == nil {
		s.err = err
	}
	return d
}

func (s *sim) record(e Event) int32 {
	s.tr.Events = append(s.tr.Events, e)
	return int32(len(s.tr.Events) - 1)
}

func (s *sim) handle(e simEvent) {
	switch e.kind {
	case evSubmit:
		if s.work.Until > 0 && e.t > s.work.Until {
			return
		}
		if !s.work.OneEach {
			s.push(simEvent{t: e.t + s.rng.ExpFloat64()/s.work.Rate, kind: evSubmit, node: e.node, user: e.user})
		}
		s.submit(e.t, e.node, e.user)
	case evMsgDue:
		s.due(e.t, e.node, &packet{kind: kindMsg, msg: e.msg, cause: s.msgs[e.msg].submitEv})
	case evHopDue:
		s.due(e.t, e.node, e.pkt)
	case evFlush:
		s.flush(e.t, e.node)
		s.push(simEvent{t: e.t + s.net.Pool.Window, kind: evFlush, node: e.node})
	case evTick:
		s.every(evTick, e.node, s.net.SendRate, e.t)
		if q := s.sendQ[e.node]; len(q) > 0 {
			p := q[0]
			q[0] = nil
			s.sendQ[e.node] = q[1:]
			s.send(e.t, e.node, p)
		} else {
			s.send(e.t, e.node, s.cover(kindDrop, e.node))
		}
	case evDrop:
		s.every(evDrop, e.node, s.net.DropRate, e.t)
		s.send(e.t, e.node, s.cover(kindDrop, e.node))
	case evLoop:
		s.every(evLoop, e.node, s.net.LoopRate, e.t)
		s.send(e.t, e.node, s.cover(kindLoop, e.node))
	case evExitDue:
		s.due(e.t, e.node, &packet{kind: kindExitMsg, msg: e.msg})
	}
}

func (s *sim) deliver(t float64, msg int32) {
	m := &s.msgs[msg]
	s.record(Event{T: t, Kind: Deliver, From: m.exit, To: -1, Cause: -1, Msg: msg})
	s.cnt.Delivered++
	s.cnt.Latency = append(s.cnt.Latency, t-m.submitted)
}

func (s *sim) submit(t float64, node, user int32) {
	id := int32(len(s.msgs))
	ev := s.record(Event{T: t, Kind: Submit, From: user, To: node, Cause: -1, Msg: id})
	s.tr.Sender = append(s.tr.Sender, user)
	s.tr.Submitted = append(s.tr.Submitted, t)
	size := s.work.Size(s.rng)
	s.msgs = append(s.msgs, message{entry: node, exit: s.pickExit(node), frags: s.net.Fragments(size), submitted: t, submitEv: ev})
	s.cnt.Messages++
	s.push(simEvent{t: t + s.delay(s.net.MsgDelay), kind: evMsgDue, node: node, msg: id})
}

// due puts an item whose delay has passed into the node's pool, or
// releases it at once when the node runs no pool.
func (s *sim) due(t float64, node int32, p *packet) {
	if s.net.Pool.Window == 0 {
		s.release(t, node, p)
		return
	}
	s.pools[node] = append(s.pools[node], p)
}

func (s *sim) flush(t float64, node int32) {
	pool := s.pools[node]
	k := s.net.Pool.batch(len(pool))
	for i := range k {
		j := i + s.rng.IntN(len(pool)-i)
		pool[i], pool[j] = pool[j], pool[i]
	}
	out := make([]*packet, k)
	copy(out, pool[:k])
	rest := pool[k:]
	s.pools[node] = append(pool[:0:0], rest...)
	for _, p := range out {
		s.release(t, node, p)
	}
}

func (s *sim) release(t float64, node int32, p *packet) {
	switch p.kind {
	case kindExitMsg:
		s.deliver(t, p.msg)
		return
	case kindReal, kindDrop, kindLoop:
		s.send(t, node, p)
		return
	}
	m := &s.msgs[p.msg]
	var shared []int32
	for range m.frags {
		path := shared
		if path == nil {
			path = s.pathTo(node, m.exit)
			if s.net.SharedPath {
				shared = path
			}
		}
		f := &packet{kind: kindReal, msg: p.msg, path: path, cause: p.cause}
		s.cnt.RealPackets++
		if s.net.SendRate > 0 {
			s.sendQ[node] = append(s.sendQ[node], f)
			s.cnt.MaxSendQueue = max(s.cnt.MaxSendQueue, len(s.sendQ[node]))
		} else {
			s.send(t, node, f)
		}
	}
}

// send puts p on the link from node to its next hop and hands it to that
// node.
func (s *sim) send(t float64, node int32, p *packet) {
	next := p.path[0]
	p.path = p.path[1:]
	terminal := len(p.path) == 0
	msg := int32(-1)
	if p.kind == kindReal {
		msg = p.msg
	}
	ev := s.record(Event{T: t, Kind: Link, From: node, To: next, Cause: p.cause, Msg: msg, Terminal: terminal})
	s.cnt.LinkEvents++
	p.cause = ev
	if !terminal {
		s.push(simEvent{t: t + s.delay(s.net.HopDelay), kind: evHopDue, node: next, pkt: p})
		return
	}
	if p.kind != kindReal {
		return // a drop packet's end, or a loop back home
	}
	m := &s.msgs[p.msg]
	s.tr.Fragments[p.msg] = append(s.tr.Fragments[p.msg], ev)
	if m.arrived++; m.arrived == m.frags {
		s.push(simEvent{t: t + s.delay(s.net.ExitDelay), kind: evExitDue, node: next, msg: p.msg})
	}
}

func (s *sim) cover(k pktKind, node int32) *packet {
	s.cnt.CoverPackets++
	var path []int32
	if k == kindLoop {
		path = append(s.distinct(s.net.Hops-1, node, -1), node)
	} else {
		path = s.distinct(s.net.Hops, node, -1)
	}
	return &packet{kind: k, msg: -1, path: path, cause: -1}
}

func (s *sim) pickExit(entry int32) int32 {
	for {
		x := int32(s.rng.IntN(s.net.Exits))
		if x != entry {
			return x
		}
	}
}

// pathTo is a path of Hops distinct nodes, none of them the entry, ending
// at exit.
func (s *sim) pathTo(entry, exit int32) []int32 {
	return append(s.distinct(s.net.Hops-1, entry, exit), exit)
}

// distinct draws n distinct nodes, none equal to a or b.
func (s *sim) distinct(n int, a, b int32) []int32 {
	out := make([]int32, 0, n+1)
	for len(out) < n {
		x := int32(s.rng.IntN(s.net.Nodes))
		if x == a || x == b || contains(out, x) {
			continue
		}
		out = append(out, x)
	}
	return out
}

func contains(s []int32, x int32) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}
