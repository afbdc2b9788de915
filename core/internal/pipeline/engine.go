// Package pipeline is mixmta's pipeline engine: it moves each queued item
// through the configured stages in order (transform, route, delay, deliver),
// one queue transaction per state change, and owns the scheduler that
// releases delayed items in shuffled batches (README.md, "The life of a
// message", steps 3 to 5).
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// Impl is what a stage does; *pluginhost.Stage implements it over RPC.
type Impl interface {
	Check(ctx context.Context, m *sdk.Message) error
	Transform(ctx context.Context, m *sdk.Message) (*sdk.Change, error)
	Route(ctx context.Context, m *sdk.Message) ([]sdk.Route, error)
	Delay(ctx context.Context, req sdk.DelayRequest) ([]time.Duration, error)
	Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error)
	Healthy() bool
}

// Stage is one configured pipeline stage.
type Stage struct {
	Name  string
	Kind  sdk.Kind
	Needs sdk.Needs
	Impl  Impl
	// Sanitizes: the plugin reports sdk.CapSanitizes.
	Sanitizes bool
	// Packets: a router whose plugin is also a mixer, so its routes are
	// mixnet packets that leave this node.
	Packets bool
}

// DefaultWorkers is the number of items the engine processes at once
// unless told otherwise; it is also the default of the config's
// queue.workers.
const DefaultWorkers = 8

// backlogRecheck is how long a message held by a Backlog waits before it
// asks again: one queue write per held message each time.
const backlogRecheck = 5 * time.Second

// OrderError is a pipeline order rule broken at stage Index.
type OrderError struct {
	Index int
	Msg   string
}

func (e *OrderError) Error() string { return e.Msg }

// Options configure an Engine.
type Options struct {
	Pool    Pool
	Backoff Backoff
	// MaxLifetime: items older than this are given up (0 = forever).
	MaxLifetime time.Duration
	// Workers: items processed at once (default DefaultWorkers), except
	// released messages on their way to a deliverer: those have their own
	// Concurrency workers per deliverer.
	Workers int
	// Concurrency: deliveries in flight per deliverer stage (default 16).
	Concurrency int
	// CallTimeout bounds one stage call (default 5 min).
	CallTimeout time.Duration
	// Bounce: send a delivery status notification to MAIL FROM for
	// recipients given up on (default off: no bounce to an anonymous
	// sender). Hostname names this MTA in it.
	Bounce   bool
	Hostname string
	// LogAddresses adds MAIL FROM and RCPT TO to the delivery log lines
	// (log.addresses; default off: no addresses at info).
	LogAddresses bool
	// MaxStageFailures: an item whose current stage fails this many times
	// in a row (errors or plugin crashes) is quarantined (default 5).
	// MaxCrashes: an item on which the stage's plugin crashed this many
	// times, the last time while the item was the only call in flight,
	// is quarantined (default 2: "crashes on it more than once").
	MaxStageFailures int
	MaxCrashes       int
	// Packets handles packet and fragment items (the mixnet); nil when
	// this node is not a mix.
	Packets PacketHandler
	// MaxItems is queue.max_items (0: no limit): Full reports the
	// messages queued at it, and a bounce that would add an item to a
	// full queue is held (bounce).
	MaxItems int64
	Logger   hclog.Logger
	Counters *stats.Counters
}

// PacketHandler processes the items of a mix node: packets received,
// packets to send, exit fragments. released is as for process.
type PacketHandler interface {
	Process(ctx context.Context, it *queue.Item, released bool)
}

// Backlog is implemented by a PacketHandler whose own packets wait for a
// sending schedule: while Backlogged returns an error, a message does not
// enter a packet router (it waits backlogRecheck and asks again), so
// packets never pile up faster than the schedule sends them.
type Backlog interface {
	Backlogged() error
}

// Engine runs items through the stages.
type Engine struct {
	q      *queue.Queue
	stages []Stage
	opt    Options
	log    hclog.Logger
	c      *stats.Counters
	sched  *Scheduler

	work chan work
	// released gets the items the scheduler released: workers take them
	// before new work, so a backlog of arrivals does not hold back what
	// is due to leave (and what is held in memory until it leaves).
	released chan work
	// deliveries carries released messages that only transformers separate
	// from their deliverer (see finalRun). Their own workers run them: a
	// delivery waits on the peer for a whole SMTP transaction, and taking
	// it from the shared workers would let a few slow peers hold every
	// worker, while the stages of newly accepted items (a delay sampled
	// right after the 250) wait behind them.
	deliveries chan work
	stopped    <-chan struct{}
	sem        map[int]chan struct{}
	wg         sync.WaitGroup
	inflight   atomic.Int64
	queued     atomic.Int64
	// messages counts the queued items of KindMessage (queued less packets
	// and fragments): what Full compares with MaxItems.
	messages atomic.Int64
	stopping atomic.Bool

	// excl serializes calls per stage index for suspect items (see call);
	// stages served by one plugin process share one.
	excl map[int]*sync.RWMutex
	// held and busy are the ids of held items and of items a worker is
	// processing right now (see HoldItem).
	mu   sync.Mutex
	held map[queue.ID]bool
	busy map[queue.ID]int
}

type work struct {
	it       *queue.Item
	released bool
}

// New validates the stage order and builds an engine. The order rules:
// checkers first; at least one deliverer; nothing after the last
// deliverer; a router that emits mixnet packets comes after a stage that
// sanitizes (the sender's identity never leaves the entry node).
func New(q *queue.Queue, stages []Stage, o Options) (*Engine, error) {
	if err := ValidateOrder(stages); err != nil {
		return nil, err
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 5 * time.Minute
	}
	if o.Backoff.MaxAttempts == 0 {
		o.Backoff = DefaultBackoff()
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Counters == nil {
		o.Counters = &stats.Counters{}
	}
	if o.MaxStageFailures <= 0 {
		o.MaxStageFailures = 5
	}
	if o.MaxCrashes <= 0 {
		o.MaxCrashes = 2
	}
	e := &Engine{q: q, stages: stages, opt: o, log: o.Logger, c: o.Counters, work: make(chan work, 4096), released: make(chan work, 4096), deliveries: make(chan work, 4096), sem: map[int]chan struct{}{},
		excl: map[int]*sync.RWMutex{}, held: map[queue.ID]bool{}, busy: map[queue.ID]int{}}
	for i, s := range stages {
		if s.Kind == sdk.KindDeliverer {
			e.sem[i] = make(chan struct{}, o.Concurrency)
		}
		e.excl[i] = &sync.RWMutex{}
		// A crash of a plugin process fails the calls of every stage it
		// serves: a suspect item is alone only when no call of any of
		// them is in flight.
		if p, ok := s.Impl.(interface{ Process() any }); ok {
			for j := range i {
				if q, ok := stages[j].Impl.(interface{ Process() any }); ok && q.Process() == p.Process() {
					e.excl[i] = e.excl[j]
					break
				}
			}
		}
	}
	e.sched = NewScheduler(o.Pool, func(it *queue.Item) { e.enqueue(it, true) })
	return e, nil
}

// ValidateOrder checks the pipeline's stage order (see New). A broken rule
// that belongs to one stage is an *OrderError.
func ValidateOrder(stages []Stage) error {
	last := -1
	seenOther := false
	sanitized := false
	for i, s := range stages {
		if s.Kind == sdk.KindRouter && s.Packets && !sanitized {
			return &OrderError{Index: i, Msg: fmt.Sprintf("stage %q turns messages into mixnet packets, but no stage before it sanitizes them (the exit would learn the sender): put a sanitize stage before it", s.Name)}
		}
		if s.Kind == sdk.KindTransformer && s.Sanitizes {
			sanitized = true
		}
		switch s.Kind {
		case sdk.KindChecker:
			if seenOther {
				return fmt.Errorf("stage %q: checkers must come before every other stage", s.Name)
			}
		case sdk.KindDeliverer:
			last = i
			seenOther = true
		case sdk.KindTransformer, sdk.KindRouter, sdk.KindDelayer:
			seenOther = true
		default:
			return fmt.Errorf("stage %q: unknown kind %q", s.Name, s.Kind)
		}
	}
	if last < 0 {
		return errors.New("pipeline has no deliverer stage")
	}
	for _, s := range stages[last+1:] {
		if s.Kind != sdk.KindDeliverer {
			return fmt.Errorf("stage %q comes after the last deliverer and would never run", s.Name)
		}
	}
	return nil
}

// Scheduler returns the engine's scheduler.
func (e *Engine) Scheduler() *Scheduler { return e.sched }

// Queued returns the number of items in the queue.
func (e *Engine) Queued() int64 { return e.queued.Load() }

// Messages returns the number of messages in the queue: Queued less the
// mix packets (received, waiting to be sent) and exit fragments.
func (e *Engine) Messages() int64 { return e.messages.Load() }

// Full reports whether the queue holds Options.MaxItems messages (false
// without a limit). A mix node refuses packets from its links while it
// is (docs/mixnet.md, "Flow control"), and a bounce that would add an
// item waits.
func (e *Engine) Full() bool {
	return e.opt.MaxItems > 0 && e.messages.Load() >= e.opt.MaxItems
}

func (e *Engine) countMessage(it *queue.Item, d int64) {
	if it.Kind == queue.KindMessage {
		e.messages.Add(d)
	}
}

// Delayed returns the number of items waiting for their send_after.
func (e *Engine) Delayed() int64 { w, _ := e.sched.Len(); return int64(w) }

// InFlight returns the number of items being processed.
func (e *Engine) InFlight() int64 { return e.inflight.Load() }

// Checkers returns the checker stages (run by the SMTP server).
func (e *Engine) Checkers() []Stage {
	var out []Stage
	for _, s := range e.stages {
		if s.Kind == sdk.KindChecker {
			out = append(out, s)
		}
	}
	return out
}

// Start loads every item from the queue (resuming each where it was) and
// starts the workers and the scheduler; they stop when ctx ends. Call Wait
// after cancelling ctx to let in-flight items finish.
func (e *Engine) Start(ctx context.Context) error {
	var resumed []*queue.Item
	err := e.q.Items(func(it *queue.Item) error {
		resumed = append(resumed, it)
		return nil
	})
	if err != nil {
		return fmt.Errorf("pipeline: loading queue: %w", err)
	}
	e.queued.Store(int64(len(resumed)))
	msgs := 0
	for _, it := range resumed {
		if it.Kind == queue.KindMessage {
			msgs++
		}
	}
	e.messages.Store(int64(msgs))
	e.stopped = ctx.Done()
	for i := 0; i < e.opt.Workers; i++ {
		e.wg.Add(1)
		go e.worker(ctx, e.released, e.work)
	}
	for i := 0; i < e.opt.Concurrency*len(e.sem); i++ {
		e.wg.Add(1)
		go e.worker(ctx, e.deliveries, nil)
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.sched.Run(ctx) }()
	go func() {
		for _, it := range resumed {
			if it.Held {
				e.mu.Lock()
				e.held[it.ID] = true
				e.mu.Unlock()
				continue
			}
			if it.Waiting {
				e.sched.Add(it)
			} else {
				e.enqueue(it, false)
			}
		}
		if len(resumed) > 0 {
			e.log.Info("[QUEUE] resumed items", "count", len(resumed))
		}
	}()
	return nil
}

// Wait blocks until the workers and scheduler have stopped.
func (e *Engine) Wait() { e.wg.Wait() }

// Submit hands a newly accepted item to the workers.
func (e *Engine) Submit(it *queue.Item) {
	e.queued.Add(1)
	e.countMessage(it, 1)
	e.enqueue(it, false)
}

// enqueue hands an item to the workers. It never blocks the caller (a
// worker splitting an item, or the scheduler releasing a batch): when the
// channel is full the hand-off waits in its own goroutine.
func (e *Engine) enqueue(it *queue.Item, released bool) {
	if e.stopping.Load() {
		return // it stays in the queue and resumes at the next start
	}
	w := work{it: it, released: released}
	ch := e.work
	if released {
		ch = e.released
		if it.Kind == queue.KindMessage && e.finalRun(it) >= 0 {
			ch = e.deliveries
		}
	}
	select {
	case ch <- w:
	default:
		go func() {
			select {
			case ch <- w:
			case <-e.stopped:
			}
		}()
	}
}

// worker runs items from first before items from second (a nil second:
// first only).
func (e *Engine) worker(ctx context.Context, first, second <-chan work) {
	defer e.wg.Done()
	for {
		var w work
		select {
		case <-ctx.Done():
			e.stopping.Store(true)
			return
		case w = <-first:
		default:
			select {
			case <-ctx.Done():
				e.stopping.Store(true)
				return
			case w = <-first:
			case w = <-second:
			}
		}
		if !e.claim(w.it.ID) {
			continue // held meanwhile, or already being processed
		}
		e.inflight.Add(1)
		e.process(context.WithoutCancel(ctx), w.it, w.released)
		e.inflight.Add(-1)
		e.unclaim(w.it.ID)
	}
}

// message builds the stage's view of an item, loading only what it needs.
// The header is loaded (it is bounded by the listener's limits); the body
// is never loaded whole: OpenBody reads it from the queue chunk by chunk
// while the SDK streams it to the plugin, so the core holds one chunk per
// call whatever the message size.
func (e *Engine) message(it *queue.Item, needs sdk.Needs) (*sdk.Message, error) {
	m := &sdk.Message{ID: it.Msg.String(), Envelope: it.Envelope, Size: it.Size, ReceivedAt: it.Received, Attempt: it.Attempts}
	var err error
	if needs&sdk.NeedHeader != 0 {
		if m.Header, err = e.q.Blob(it.Header); err != nil {
			return nil, err
		}
		if m.Header == nil {
			m.Header = []byte{}
		}
	}
	if needs.Body() {
		if m.BodyLen, err = e.q.BlobLen(it.Body); err != nil {
			return nil, err
		}
		body := it.Body
		m.OpenBody = func() (io.Reader, error) { return e.q.BlobReader(body) }
	}
	return m, nil
}

// process runs stages from it.Stage until the item waits, splits or ends.
// released says the scheduler let it go (it may be delivered).
func (e *Engine) process(ctx context.Context, it *queue.Item, released bool) {
	if it.Kind != queue.KindMessage {
		if e.opt.Packets == nil {
			e.log.Error("[QUEUE] packet item but this node is not a mix; dropped", "item", it.ID.String(), "kind", it.Kind)
			e.drop(it)
			return
		}
		e.opt.Packets.Process(ctx, it, released)
		return
	}
	if released {
		if dlv := e.finalRun(it); dlv >= 0 {
			e.transformAndDeliver(ctx, it, dlv)
			return
		}
	}
	for it.Stage < len(e.stages) {
		st := e.stages[it.Stage]
		if st.Kind == sdk.KindDeliverer && it.Deliverer >= 0 && it.Deliverer != it.Stage {
			it.Stage++ // a router chose another deliverer
			continue
		}
		var next bool
		alone := it.Crashes > 0
		err := e.call(it, it.Stage, func() (err error) {
			cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
			defer cancel()
			next, err = e.step(cctx, st, it, released)
			return err
		})
		if err != nil {
			e.stageFailed(st, it, err, alone)
			return
		}
		if !next {
			return
		}
	}
	// Ran past the last stage without a delivery: cannot happen with a
	// valid order; drop it loudly rather than spin.
	e.log.Error("[QUEUE] item ran past the last stage", "item", it.ID.String())
	e.drop(it)
}

// step runs one stage. It returns next=true to continue with it.Stage.
func (e *Engine) step(ctx context.Context, st Stage, it *queue.Item, released bool) (bool, error) {
	switch st.Kind {
	case sdk.KindChecker:
		it.Stage++
		return true, nil

	case sdk.KindTransformer:
		m, err := e.message(it, st.Needs)
		if err != nil {
			return false, err
		}
		ch, err := st.Impl.Transform(ctx, m)
		if err != nil {
			return false, err
		}
		it.Stage++
		it.Waiting = false
		it.Failures, it.Crashes, it.Reason = 0, 0, ""
		var h, b []byte
		if ch != nil {
			if ch.MailFrom != nil {
				it.Envelope.MailFrom = *ch.MailFrom
			}
			h, b = ch.Header, ch.Body
			if h != nil || b != nil {
				it.Size, err = e.newSize(it, m, h, b)
				if err != nil {
					return false, err
				}
			}
		}
		return true, e.q.Replace(it, h, b)

	case sdk.KindRouter:
		if b, ok := e.opt.Packets.(Backlog); ok && st.Packets && b.Backlogged() != nil {
			it.SendAfter = time.Now().Add(backlogRecheck)
			it.Waiting = true
			if err := e.q.Update(it); err != nil {
				return false, err
			}
			e.sched.Add(it)
			return false, nil
		}
		m, err := e.message(it, st.Needs)
		if err != nil {
			return false, err
		}
		routes, err := st.Impl.Route(ctx, m)
		if err != nil {
			return false, err
		}
		return false, e.split(it, routes)

	case sdk.KindDelayer:
		ds, err := st.Impl.Delay(ctx, sdk.DelayRequest{Envelope: it.Envelope, Size: it.Size, Count: 1})
		if err != nil {
			return false, err
		}
		if len(ds) != 1 {
			return false, fmt.Errorf("delayer returned %d delays for 1", len(ds))
		}
		it.Stage++
		it.SendAfter = time.Now().Add(ds[0])
		it.Waiting = true
		it.Failures, it.Crashes, it.Reason = 0, 0, ""
		if err := e.q.Update(it); err != nil {
			return false, err
		}
		e.sched.Add(it)
		return false, nil

	case sdk.KindDeliverer:
		if !released {
			it.Waiting = true
			if it.SendAfter.IsZero() {
				it.SendAfter = time.Now()
			}
			if err := e.q.Update(it); err != nil {
				return false, err
			}
			e.sched.Add(it)
			return false, nil
		}
		return false, e.deliver(ctx, st, it)
	}
	return false, fmt.Errorf("unknown stage kind %q", st.Kind)
}

// newSize is the item's size after a transform replaced header h and/or
// body b (nil = unchanged); m holds the parts the stage was given, so the
// old sizes are known without reading the queue in the common case.
func (e *Engine) newSize(it *queue.Item, m *sdk.Message, h, b []byte) (int64, error) {
	size := it.Size
	if h != nil {
		oldH := int64(len(m.Header))
		if m.Header == nil {
			var err error
			if oldH, err = e.q.BlobLen(it.Header); err != nil {
				return 0, err
			}
		}
		size += int64(len(h)) - oldH
	}
	if b != nil {
		oldB := m.BodyLen
		if m.Body == nil && m.OpenBody == nil {
			var err error
			if oldB, err = e.q.BlobLen(it.Body); err != nil {
				return 0, err
			}
		}
		size += int64(len(b)) - oldB
	}
	return size, nil
}

// split replaces an item by its routes in one transaction and continues
// each child at the next stage (or its chosen deliverer).
func (e *Engine) split(it *queue.Item, routes []sdk.Route) error {
	covered := map[string]bool{}
	var children []queue.Child
	for _, r := range routes {
		dlv := -1
		if r.Deliverer != "" {
			dlv = e.stageIndex(r.Deliverer)
			if dlv < 0 || e.stages[dlv].Kind != sdk.KindDeliverer {
				return sdk.Permanent(554, "3.5", "router chose %q, which is not a deliverer stage", r.Deliverer)
			}
		}
		for _, rc := range r.RcptTo {
			covered[rc] = true
		}
		if r.NextHop != (sdk.NodeID{}) {
			if e.opt.Packets == nil {
				return sdk.Permanent(554, "3.5", "router produced packets but this node has no mix section")
			}
			// A packet item carries no envelope: the addresses travel
			// inside the encrypted payload.
			children = append(children, queue.Child{Kind: queue.KindPacketOut, NextHop: r.NextHop, Content: r.Body, Deliverer: -1})
			continue
		}
		env := it.Envelope
		env.RcptTo = r.RcptTo
		children = append(children, queue.Child{Envelope: env, Stage: it.Stage + 1, Deliverer: dlv, Content: r.Body})
	}
	for _, rc := range it.Envelope.RcptTo {
		if !covered[rc] {
			e.c.Failed.Add(1)
			e.log.Warn("[QUEUE] router left a recipient without a route; recipient failed", "item", it.ID.String())
			e.log.Debug("[QUEUE] unrouted recipient", "rcpt", rc)
		}
	}
	kids, err := e.q.Split(it, children)
	if err != nil {
		return err
	}
	if packets := len(children) - countMessages(children); packets > 0 {
		e.c.SphinxMessages.Add(1)
		e.c.SphinxPackets.Add(int64(packets))
		e.log.Info("[MIX] message turned into packets", "item", it.ID.String(), "packets", packets)
	}
	e.queued.Add(int64(len(kids) - 1))
	e.messages.Add(int64(countMessages(children) - 1))
	for _, k := range kids {
		e.enqueue(k, false)
	}
	return nil
}

func countMessages(cs []queue.Child) int {
	n := 0
	for _, c := range cs {
		if c.Kind == queue.KindMessage {
			n++
		}
	}
	return n
}

func (e *Engine) stageIndex(name string) int {
	for i, s := range e.stages {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// finalRun returns the index of the deliverer that a released item reaches
// through transformers (and checkers) only, or -1. Such a run needs no
// queue transaction per transform: the transforms are applied in memory to
// the message handed to the deliverer, and re-applied to the stored
// message if delivery has to be retried (they must be deterministic enough
// for that, see sdk.Transformer).
func (e *Engine) finalRun(it *queue.Item) int {
	for j := it.Stage; j < len(e.stages); j++ {
		switch e.stages[j].Kind {
		case sdk.KindChecker, sdk.KindTransformer:
		case sdk.KindDeliverer:
			if it.Deliverer >= 0 && it.Deliverer != j {
				continue
			}
			return j
		default:
			return -1
		}
	}
	return -1
}

// transformAndDeliver runs the transformers from it.Stage on one in-memory
// copy of the message and delivers the result with deliverer dlv. The
// body stays in the queue and is streamed to each stage that reads it,
// unless a transformer replaced it.
func (e *Engine) transformAndDeliver(ctx context.Context, it *queue.Item, dlv int) {
	m, err := e.message(it, sdk.NeedAll)
	if err != nil {
		e.stageFailed(e.stages[it.Stage], it, err, false)
		return
	}
	for j := it.Stage; j < dlv; j++ {
		st := e.stages[j]
		if st.Kind != sdk.KindTransformer {
			continue
		}
		var ch *sdk.Change
		alone := it.Crashes > 0
		err := e.call(it, j, func() (err error) {
			cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
			defer cancel()
			ch, err = st.Impl.Transform(cctx, st.Needs.Mask(m))
			return err
		})
		if err != nil {
			e.stageFailed(st, it, err, alone)
			return
		}
		if ch != nil {
			if ch.MailFrom != nil {
				m.Envelope.MailFrom = *ch.MailFrom
			}
			if ch.Header != nil {
				m.Header = ch.Header
			}
			if ch.Body != nil {
				m.Body, m.OpenBody, m.BodyLen = ch.Body, nil, int64(len(ch.Body))
			}
			// The next transformer sees the size of what it gets (pad
			// computes its padding from it).
			m.Size = int64(len(m.Header)) + m.BodyLen
		}
	}
	m.Size = int64(len(m.Header)) + m.BodyLen
	st := e.stages[dlv]
	alone := it.Crashes > 0
	err = e.call(it, dlv, func() error {
		cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
		defer cancel()
		return e.deliverMessage(cctx, st, dlv, it, st.Needs.Mask(m))
	})
	if err != nil {
		e.stageFailed(st, it, err, alone)
	}
}

// deliver runs a deliverer on the stored message.
func (e *Engine) deliver(ctx context.Context, st Stage, it *queue.Item) error {
	m, err := e.message(it, st.Needs)
	if err != nil {
		return err
	}
	return e.deliverMessage(ctx, st, it.Stage, it, m)
}

// deliverMessage runs deliverer st (pipeline index dlv) on m and applies
// per-recipient results to item it: delivered recipients are done,
// permanent failures are counted and dropped, temporary failures wait for
// the backoff schedule. Each attempt is logged at info as one line per
// outcome, like Postfix's status=sent|deferred|bounced (see logAttempt).
func (e *Engine) deliverMessage(ctx context.Context, st Stage, dlv int, it *queue.Item, m *sdk.Message) error {
	start := time.Now()
	// The slot bounds the calls in flight to the deliverer, not the
	// queue work that follows (the item's delete or retry record, a
	// bounce): it is free again as soon as the call returns.
	results, callErr := func() ([]sdk.RcptResult, error) {
		sem := e.sem[dlv]
		sem <- struct{}{}
		defer func() { <-sem }()
		return st.Impl.Deliver(ctx, m)
	}()
	if pluginclient.IsTransport(callErr) || (len(results) == 0 && stageDown(st, callErr)) {
		return callErr // plugin crashed or down: stageFailed decides
	}
	// The call itself worked: the stage no longer fails on this item.
	it.Failures, it.Crashes = 0, 0
	byRcpt := map[string]error{}
	seen := map[string]bool{}
	relayOf := map[string]string{}
	for _, r := range results {
		byRcpt[r.Rcpt], seen[r.Rcpt], relayOf[r.Rcpt] = r.Err, true, r.Relay
	}
	var retry []string
	var lastTemp error
	var failed []failure
	outcome := map[string][]string{} // status -> recipients
	var firstErr = map[string]error{}
	relays := map[string]string{} // status -> the first recipient's relay
	for _, rc := range it.Envelope.RcptTo {
		err, ok := byRcpt[rc], seen[rc]
		if !ok {
			err = callErr
			if err == nil {
				err = sdk.Temporary(451, "4.0", "deliverer returned no result")
			}
		}
		status := "sent"
		switch {
		case err == nil:
			e.c.Sent.Add(1)
		case sdk.IsPermanent(err):
			status = "bounced"
			e.c.Failed.Add(1)
			failed = append(failed, failure{rc, err})
			e.log.Debug("[DELIVER] failure detail", "rcpt", rc, "error", err)
		default:
			status = "deferred"
			e.c.Deferred.Add(1)
			retry = append(retry, rc)
			lastTemp = err
			e.log.Debug("[DELIVER] temporary failure detail", "rcpt", rc, "error", err)
		}
		if _, ok := firstErr[status]; !ok {
			firstErr[status], relays[status] = err, relayOf[rc]
		}
		outcome[status] = append(outcome[status], rc)
	}
	e.c.ObserveDelivery(time.Since(it.Received))
	if len(failed) > 0 && len(retry) > 0 && e.bounces(it) && e.Full() {
		// The bounce would add an item to a full queue: the failed
		// recipients stay on the message and are bounced at a later
		// attempt, once there is room or when they are all that is left
		// (the bounce then replaces the message). Held, never dropped,
		// and the bound holds.
		for _, f := range failed {
			retry = append(retry, f.rcpt)
		}
		e.c.Failed.Add(-int64(len(failed)))
		e.c.Deferred.Add(int64(len(failed)))
		if _, ok := firstErr["deferred"]; !ok {
			firstErr["deferred"], relays["deferred"] = firstErr["bounced"], relays["bounced"]
		}
		outcome["deferred"] = append(outcome["deferred"], outcome["bounced"]...)
		delete(outcome, "bounced")
		failed = nil
	}
	for _, status := range []string{"sent", "deferred", "bounced"} {
		if rcpts := outcome[status]; len(rcpts) > 0 {
			e.logAttempt(it, st, status, firstErr[status], relays[status], rcpts, start)
		}
	}
	if err := e.bounce(it, failed); err != nil {
		// Not queued: the message keeps the failed recipients and tries
		// them again, so their bounce is not lost.
		for _, f := range failed {
			retry = append(retry, f.rcpt)
		}
		lastTemp = sdk.Temporary(451, "3.0", "bounce not queued")
	}
	if len(retry) == 0 {
		return e.done(it)
	}
	it.Envelope.RcptTo = retry
	it.Reason = st.Name + ": " + reply(lastTemp)
	return e.retryLater(it, st, lastTemp, true)
}

// logAttempt writes the info line of one delivery attempt for the
// recipients rcpts that share one status: queue id, stage, status, reply
// code and text (addresses in the text are masked), the relay that answered
// (see relayField), the delays in seconds
// split as queue (until send_after: delay and backoff), pool (due until the
// attempt started) and delivery (the attempt itself), and the total since
// acceptance. Addresses only when LogAddresses is set.
func (e *Engine) logAttempt(it *queue.Item, st Stage, status string, err error, relay string, rcpts []string, start time.Time) {
	due := it.SendAfter
	if due.IsZero() || due.After(start) { // never delayed, or flushed early
		due = start
	}
	queued, pooled := max(due.Sub(it.Received), 0), start.Sub(due)
	args := []any{"id", it.ID.String(), "msg", it.Msg.String(), "stage", st.Name, "status", status,
		"reply", reply(err), "relay", e.relayField(relay), "rcpts", len(rcpts),
		"delay", secs(time.Since(it.Received)),
		"delays", secs(queued) + "/" + secs(pooled) + "/" + secs(time.Since(start)),
		"attempt", it.Attempts + 1}
	if e.opt.LogAddresses {
		args = append(args, "from", it.Envelope.MailFrom, "to", strings.Join(rcpts, ","))
	}
	e.log.Info("[DELIVER] "+status, args...)
}

// relayField is the relay as logged: "none" when the stage names none; an
// IP literal (a smarthost, the site's MTA, a local LMTP server) as given; a
// host name or onion address only with log.addresses, since it names the
// recipient's domain, else "***".
func (e *Engine) relayField(relay string) string {
	if relay == "" {
		return "none"
	}
	host, _, err := net.SplitHostPort(relay)
	if err != nil {
		host = relay
	}
	if _, err := netip.ParseAddr(host); err == nil || e.opt.LogAddresses {
		return relay
	}
	return "***"
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) }

// addrLike matches what may be a mail address inside a peer's reply text.
var addrLike = regexp.MustCompile(`[^\s<>"'(),;:\[\]]*@[^\s<>"'(),;:\[\]]*`)

// RedactAddresses returns s with anything that looks like a mail address
// (a run of characters around an "@") replaced by "***".
func RedactAddresses(s string) string { return addrLike.ReplaceAllString(s, "***") }

// reply renders a stage error as "CODE X.Y.Z text" for logs and `queue
// ls`, with anything that looks like an address replaced by "***": a
// peer's reply often echoes the recipient.
func reply(err error) string {
	if err == nil {
		return "250 2.0.0 ok"
	}
	if pluginclient.IsTransport(err) {
		return "plugin crashed or unreachable"
	}
	var se *sdk.Error
	if !errors.As(err, &se) {
		return "internal error"
	}
	msg := RedactAddresses(se.Message)
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return strings.TrimSpace(fmt.Sprintf("%d %s %s", se.SMTPCode(), se.EnhancedCode(), msg))
}

// retryLater re-queues an item after a temporary failure, or gives up
// when attempts or the lifetime are exhausted. countAttempt says the
// failure was a delivery attempt (the backoff schedule advances); else the
// wait follows the item's stage failures.
func (e *Engine) retryLater(it *queue.Item, st Stage, cause error, countAttempt bool) error {
	wait := time.Second
	if countAttempt {
		w, ok := e.opt.Backoff.Wait(it.Attempts)
		it.Attempts++
		if !ok {
			e.giveUp(it, st, "attempts exhausted", cause)
			return nil
		}
		wait = w
	} else if w, _ := e.opt.Backoff.Wait(max(it.Failures-1, 0)); w > 0 {
		wait = w
	}
	if e.opt.MaxLifetime > 0 && time.Since(it.Received)+wait > e.opt.MaxLifetime {
		e.giveUp(it, st, "queue lifetime exceeded", cause)
		return nil
	}
	e.log.Debug("[QUEUE] retry scheduled", "id", it.ID.String(), "stage", st.Name, "reason", it.Reason, "attempt", it.Attempts, "retry_in", wait.Round(time.Millisecond))
	it.SendAfter = time.Now().Add(wait)
	it.Waiting = true
	if err := e.q.Update(it); err != nil {
		return err
	}
	e.sched.Add(it)
	return nil
}

func (e *Engine) giveUp(it *queue.Item, st Stage, why string, cause error) {
	e.c.Failed.Add(int64(len(it.Envelope.RcptTo)))
	e.log.Warn("[DELIVER] giving up", "id", it.ID.String(), "stage", st.Name, "status", "bounced", "reason", why, "reply", reply(cause), "recipients", len(it.Envelope.RcptTo))
	e.log.Debug("[DELIVER] last error", "error", cause)
	var failed []failure
	for _, rc := range it.Envelope.RcptTo {
		failed = append(failed, failure{rc, cause})
	}
	if err := e.bounce(it, failed); err != nil {
		// Kept, to be given up on (and bounced) again later: a bounce is
		// never dropped for a queue error.
		it.SendAfter, it.Waiting = time.Now().Add(bounceRetry), true
		if err := e.q.Update(it); err != nil {
			e.log.Error("[QUEUE] cannot keep an item whose bounce failed; it resumes at restart", "id", it.ID.String(), "error", err)
			return
		}
		e.sched.Add(it)
		return
	}
	e.drop(it)
}

func (e *Engine) done(it *queue.Item) error {
	if err := e.q.Delete(it); err != nil {
		return err
	}
	e.queued.Add(-1)
	e.countMessage(it, -1)
	return nil
}

func (e *Engine) drop(it *queue.Item) {
	if err := e.done(it); err != nil {
		e.log.Error("[QUEUE] cannot delete item", "id", it.ID.String(), "error", err)
	}
}

// call runs fn, one call of stage idx on item it. A suspect item (its
// stage's plugin crashed during an earlier call on it) is called alone:
// no other call of that stage, or of a stage served by the same plugin
// process, is in flight, so a crash now is its own.
// Other items take the stage's lock shared and run concurrently.
func (e *Engine) call(it *queue.Item, idx int, fn func() error) error {
	l := e.excl[idx]
	if it.Crashes > 0 {
		l.Lock()
		defer l.Unlock()
	} else {
		l.RLock()
		defer l.RUnlock()
	}
	return fn()
}

// stageFailed handles an error from a stage call (or a queue error).
// Permanent errors drop the item. Temporary ones retry it later; an item
// that fails its stage MaxStageFailures times in a row, or whose plugin
// crashed MaxCrashes times on it (the last time while it was called
// alone, so the crash is certainly its own), is quarantined instead of
// retried forever: one poison item never makes a plugin restart in a loop.
func (e *Engine) stageFailed(st Stage, it *queue.Item, err error, alone bool) {
	if sdk.IsPermanent(err) {
		e.c.Failed.Add(int64(len(it.Envelope.RcptTo)))
		e.c.Dropped.Add(1)
		e.log.Warn("[QUEUE] stage failed permanently; item dropped", "id", it.ID.String(), "stage", st.Name, "reply", reply(err))
		e.log.Debug("[QUEUE] stage error", "error", err)
		e.drop(it)
		return
	}
	if stageDown(st, err) {
		// The stage's plugin cannot be started: not the item's fault, so
		// nothing is counted against it.
		e.log.Warn("[QUEUE] stage unavailable; item will be retried", "id", it.ID.String(), "stage", st.Name, "reply", reply(err))
		it.Reason = st.Name + ": " + reply(err)
		if rerr := e.retryLater(it, st, err, false); rerr != nil {
			e.log.Error("[QUEUE] cannot requeue item; it resumes at restart", "id", it.ID.String(), "error", rerr)
		}
		return
	}
	crash := pluginclient.IsTransport(err)
	it.Failures++
	if crash {
		it.Crashes++
	}
	it.Reason = st.Name + ": " + reply(err)
	switch {
	case crash && alone && it.Crashes >= e.opt.MaxCrashes:
		e.quarantine(it, st, fmt.Sprintf("%s: quarantined: the plugin crashed %d times on this item", st.Name, it.Crashes))
		return
	case it.Failures >= e.opt.MaxStageFailures:
		e.quarantine(it, st, fmt.Sprintf("%s: quarantined: failed %d times (%s)", st.Name, it.Failures, reply(err)))
		return
	}
	e.log.Warn("[QUEUE] stage failed temporarily; item will be retried", "id", it.ID.String(), "stage", st.Name, "reply", reply(err), "failures", it.Failures)
	if rerr := e.retryLater(it, st, err, st.Kind == sdk.KindDeliverer && !crash); rerr != nil {
		e.log.Error("[QUEUE] cannot requeue item; it resumes at restart", "id", it.ID.String(), "error", rerr)
	}
}

// stageDown reports whether err, a temporary error other than a crash
// during the call, came while the stage's plugin process is not running
// (it cannot be started).
func stageDown(st Stage, err error) bool {
	return err != nil && !pluginclient.IsTransport(err) && !sdk.IsPermanent(err) && !st.Impl.Healthy()
}

// quarantine holds an item with its reason: it stays in the queue, is
// listed by `mixmta queue ls` and is processed again only after `mixmta
// queue release`.
func (e *Engine) quarantine(it *queue.Item, st Stage, reason string) {
	e.setHeld(it.ID, true)
	it.Held, it.Waiting, it.Reason = true, false, reason
	e.c.Quarantined.Add(1)
	e.log.Warn("[QUEUE] item quarantined", "id", it.ID.String(), "stage", st.Name, "reason", reason)
	if err := e.q.Update(it); err != nil {
		e.log.Error("[QUEUE] cannot store quarantine; the item resumes at restart", "id", it.ID.String(), "error", err)
	}
}

func (e *Engine) setHeld(id queue.ID, held bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if held {
		e.held[id] = true
	} else {
		delete(e.held, id)
	}
}

// claim marks an item as being processed; false if it is held. An item
// handed over again while a worker has it (a mix packet re-enqueued by its
// own handler) is processed again, as before holds existed.
func (e *Engine) claim(id queue.ID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.held[id] {
		return false
	}
	e.busy[id]++
	return true
}

func (e *Engine) unclaim(id queue.ID) {
	e.mu.Lock()
	if e.busy[id]--; e.busy[id] <= 0 {
		delete(e.busy, id)
	}
	e.mu.Unlock()
}

// ErrBusy: the item is being processed right now; try again.
var ErrBusy = errors.New("item is being processed right now; try again")

// ErrNotHeld: release of an item that is not held.
var ErrNotHeld = errors.New("item is not held")

// HoldItem holds an item (`mixmta queue hold`): it is not processed until
// released. It returns ErrBusy while a worker processes it.
func (e *Engine) HoldItem(id queue.ID) error {
	e.mu.Lock()
	if e.busy[id] > 0 {
		e.mu.Unlock()
		return ErrBusy
	}
	e.held[id] = true
	e.mu.Unlock()
	it, err := e.q.Get(id)
	if err != nil {
		e.setHeld(id, false)
		return err
	}
	e.sched.Remove(id)
	it.Held, it.Reason = true, e.WaitsFor(it)+": held by the operator"
	return e.q.Update(it)
}

// ReleaseItem releases a held or quarantined item (`mixmta queue
// release`): its stage failures are forgotten and it resumes where it was
// (a waiting item waits for its send_after again).
func (e *Engine) ReleaseItem(id queue.ID) error {
	return e.resume(id, false)
}

// RequeueItem is ReleaseItem that also forgets the item's delivery
// attempts (`mixmta queue requeue`, like postsuper -r): the backoff
// schedule starts again. It works on items that are not held too.
func (e *Engine) RequeueItem(id queue.ID) error {
	return e.resume(id, true)
}

func (e *Engine) resume(id queue.ID, requeue bool) error {
	e.mu.Lock()
	busy, held := e.busy[id] > 0, e.held[id]
	e.mu.Unlock()
	if busy {
		return ErrBusy
	}
	it, err := e.q.Get(id)
	if err != nil {
		return err
	}
	if !it.Held && !requeue {
		return ErrNotHeld
	}
	inSched := e.sched.Remove(id)
	if !held && !inSched {
		return ErrBusy // handed to the workers right now
	}
	it.Held, it.Failures, it.Crashes, it.Reason = false, 0, 0, ""
	if requeue {
		if it.Attempts > 0 && it.Waiting {
			// waiting out a backoff, not a sampled delay: due now
			it.SendAfter = time.Now()
		}
		it.Attempts = 0
	}
	if err := e.q.Update(it); err != nil {
		if inSched {
			e.sched.Add(it)
		}
		return err
	}
	e.setHeld(id, false)
	if it.Waiting {
		e.sched.Add(it)
	} else {
		e.enqueue(it, false)
	}
	return nil
}

// WaitsFor names the stage a message item waits for: the stage its reason
// names (the one that deferred or quarantined it), else for an item
// waiting in the scheduler the deliverer its release runs to, else its
// next stage.
func (e *Engine) WaitsFor(it *queue.Item) string {
	if name, _, ok := strings.Cut(it.Reason, ": "); ok && e.stageIndex(name) >= 0 {
		return name
	}
	if it.Waiting {
		if dlv := e.finalRun(it); dlv >= 0 {
			return e.stages[dlv].Name
		}
	}
	if it.Stage < len(e.stages) {
		return e.stages[it.Stage].Name
	}
	return ""
}

// DeleteItem removes an item from the queue (`mixmta queue delete`). An
// item being processed right now may still be delivered.
func (e *Engine) DeleteItem(id queue.ID) error {
	it, err := e.q.Get(id)
	if err != nil {
		return err
	}
	e.sched.Remove(id)
	if err := e.q.Delete(it); err != nil {
		return err
	}
	e.setHeld(id, false)
	e.queued.Add(-1)
	e.countMessage(it, -1)
	return nil
}

// DeleteAll removes every item that no worker is processing right now
// (`mixmta queue delete ALL`) and returns how many it removed.
func (e *Engine) DeleteAll() (int, error) {
	var ids []queue.ID
	if err := e.q.Items(func(it *queue.Item) error {
		ids = append(ids, it.ID)
		return nil
	}); err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		e.mu.Lock()
		busy := e.busy[id] > 0
		e.mu.Unlock()
		if busy {
			continue
		}
		err := e.DeleteItem(id)
		if errors.Is(err, queue.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Queue returns the engine's queue.
func (e *Engine) Queue() *queue.Queue { return e.q }

// Backoff returns the engine's retry schedule.
func (e *Engine) Backoff() Backoff { return e.opt.Backoff }

// Counters returns the engine's counters.
func (e *Engine) Counters() *stats.Counters { return e.c }

// SetPacketHandler sets the mixnet's handler; call it before Start.
func (e *Engine) SetPacketHandler(h PacketHandler) { e.opt.Packets = h }
