// Package pipeline is mixmta's pipeline engine: it moves each queued item
// through the configured stages in order (transform, route, delay, deliver),
// one queue transaction per state change, and owns the scheduler that
// releases delayed items in shuffled batches. See DESIGN.md, "The message's
// life", steps 3 to 5.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
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
}

// Options configure an Engine.
type Options struct {
	Pool    Pool
	Backoff Backoff
	// MaxLifetime: items older than this are given up (0 = forever).
	MaxLifetime time.Duration
	// Workers: items processed at once (default 32).
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
	// Packets handles packet and fragment items (the mixnet); nil when
	// this node is not a mix.
	Packets  PacketHandler
	Logger   hclog.Logger
	Counters *stats.Counters
}

// PacketHandler processes the items of a mix node: packets received,
// packets to send, exit fragments. released is as for process.
type PacketHandler interface {
	Process(ctx context.Context, it *queue.Item, released bool)
}

// Engine runs items through the stages.
type Engine struct {
	q      *queue.Queue
	stages []Stage
	opt    Options
	log    hclog.Logger
	c      *stats.Counters
	sched  *Scheduler

	work     chan work
	stopped  <-chan struct{}
	sem      map[int]chan struct{}
	wg       sync.WaitGroup
	inflight atomic.Int64
	queued   atomic.Int64
	stopping atomic.Bool
}

type work struct {
	it       *queue.Item
	released bool
}

// New validates the stage order and builds an engine. The order rules:
// checkers first; at least one deliverer; nothing after the last
// deliverer.
func New(q *queue.Queue, stages []Stage, o Options) (*Engine, error) {
	if err := ValidateOrder(stages); err != nil {
		return nil, err
	}
	if o.Workers <= 0 {
		o.Workers = 32
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
	e := &Engine{q: q, stages: stages, opt: o, log: o.Logger, c: o.Counters, work: make(chan work, 4096), sem: map[int]chan struct{}{}}
	for i, s := range stages {
		if s.Kind == sdk.KindDeliverer {
			e.sem[i] = make(chan struct{}, o.Concurrency)
		}
	}
	e.sched = NewScheduler(o.Pool, func(it *queue.Item) { e.enqueue(it, true) })
	return e, nil
}

// ValidateOrder checks the pipeline's stage order (see New).
func ValidateOrder(stages []Stage) error {
	last := -1
	seenOther := false
	for i, s := range stages {
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
	e.stopped = ctx.Done()
	for i := 0; i < e.opt.Workers; i++ {
		e.wg.Add(1)
		go e.worker(ctx)
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.sched.Run(ctx) }()
	go func() {
		for _, it := range resumed {
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
	select {
	case e.work <- w:
	default:
		go func() {
			select {
			case e.work <- w:
			case <-e.stopped:
			}
		}()
	}
}

func (e *Engine) worker(ctx context.Context) {
	defer e.wg.Done()
	for {
		select {
		case <-ctx.Done():
			e.stopping.Store(true)
			return
		case w := <-e.work:
			e.inflight.Add(1)
			e.process(context.WithoutCancel(ctx), w.it, w.released)
			e.inflight.Add(-1)
		}
	}
}

// message builds the stage's view of an item, loading only what it needs.
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
	if needs&sdk.NeedBody != 0 {
		if m.Body, err = e.q.Blob(it.Body); err != nil {
			return nil, err
		}
		if m.Body == nil {
			m.Body = []byte{}
		}
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
		cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
		next, err := e.step(cctx, st, it, released)
		cancel()
		if err != nil {
			e.stageFailed(st, it, err)
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
	oldH, oldB := m.Header, m.Body
	var err error
	if h != nil && oldH == nil {
		if oldH, err = e.q.Blob(it.Header); err != nil {
			return 0, err
		}
	}
	if b != nil && oldB == nil {
		if oldB, err = e.q.Blob(it.Body); err != nil {
			return 0, err
		}
	}
	size := it.Size
	if h != nil {
		size += int64(len(h) - len(oldH))
	}
	if b != nil {
		size += int64(len(b) - len(oldB))
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
// copy of the message and delivers the result with deliverer dlv.
func (e *Engine) transformAndDeliver(ctx context.Context, it *queue.Item, dlv int) {
	m, err := e.message(it, sdk.NeedAll)
	if err != nil {
		e.stageFailed(e.stages[it.Stage], it, err)
		return
	}
	for j := it.Stage; j < dlv; j++ {
		st := e.stages[j]
		if st.Kind != sdk.KindTransformer {
			continue
		}
		view := *m
		if st.Needs&sdk.NeedHeader == 0 {
			view.Header = nil
		}
		if st.Needs&sdk.NeedBody == 0 {
			view.Body = nil
		}
		cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
		ch, err := st.Impl.Transform(cctx, &view)
		cancel()
		if err != nil {
			e.stageFailed(st, it, err)
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
				m.Body = ch.Body
			}
			// The next transformer sees the size of what it gets (pad
			// computes its padding from it).
			m.Size = int64(len(m.Header) + len(m.Body))
		}
	}
	m.Size = int64(len(m.Header) + len(m.Body))
	st := e.stages[dlv]
	if st.Needs&sdk.NeedHeader == 0 {
		m.Header = nil
	}
	if st.Needs&sdk.NeedBody == 0 {
		m.Body = nil
	}
	cctx, cancel := context.WithTimeout(ctx, e.opt.CallTimeout)
	defer cancel()
	if err := e.deliverMessage(cctx, st, dlv, it, m); err != nil {
		e.stageFailed(st, it, err)
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
// the backoff schedule.
func (e *Engine) deliverMessage(ctx context.Context, st Stage, dlv int, it *queue.Item, m *sdk.Message) error {
	sem := e.sem[dlv]
	sem <- struct{}{}
	defer func() { <-sem }()
	results, callErr := st.Impl.Deliver(ctx, m)
	if sdk.IsTransport(callErr) {
		return callErr // plugin down even after restarts: retry the item
	}
	byRcpt := map[string]error{}
	seen := map[string]bool{}
	for _, r := range results {
		byRcpt[r.Rcpt], seen[r.Rcpt] = r.Err, true
	}
	var retry []string
	var lastTemp error
	var failed []failure
	for _, rc := range it.Envelope.RcptTo {
		err, ok := byRcpt[rc], seen[rc]
		if !ok {
			err = callErr
			if err == nil {
				err = sdk.Temporary(451, "4.0", "deliverer returned no result")
			}
		}
		switch {
		case err == nil:
			e.c.Sent.Add(1)
		case sdk.IsPermanent(err):
			e.c.Failed.Add(1)
			failed = append(failed, failure{rc, err})
			e.log.Info("[DELIVER] recipient failed permanently", "item", it.ID.String(), "stage", st.Name, "reply", sdk.AsError(err).EnhancedCode())
			e.log.Debug("[DELIVER] failure detail", "rcpt", rc, "error", err)
		default:
			e.c.Deferred.Add(1)
			retry = append(retry, rc)
			lastTemp = err
			e.log.Debug("[DELIVER] temporary failure detail", "rcpt", rc, "error", err)
		}
	}
	e.bounce(it, failed)
	if len(retry) == 0 {
		return e.done(it)
	}
	it.Envelope.RcptTo = retry
	return e.retryLater(it, st, lastTemp, true)
}

// retryLater re-queues an item after a temporary failure, or gives up
// when attempts or the lifetime are exhausted.
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
	}
	if e.opt.MaxLifetime > 0 && time.Since(it.Received)+wait > e.opt.MaxLifetime {
		e.giveUp(it, st, "queue lifetime exceeded", cause)
		return nil
	}
	e.log.Info("[DELIVER] deferred", "item", it.ID.String(), "stage", st.Name, "attempt", it.Attempts, "retry_in", wait.Round(time.Millisecond))
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
	e.log.Warn("[DELIVER] giving up", "item", it.ID.String(), "stage", st.Name, "reason", why, "recipients", len(it.Envelope.RcptTo))
	e.log.Debug("[DELIVER] last error", "error", cause)
	var failed []failure
	for _, rc := range it.Envelope.RcptTo {
		failed = append(failed, failure{rc, cause})
	}
	e.bounce(it, failed)
	e.drop(it)
}

func (e *Engine) done(it *queue.Item) error {
	if err := e.q.Delete(it); err != nil {
		return err
	}
	e.queued.Add(-1)
	return nil
}

func (e *Engine) drop(it *queue.Item) {
	if err := e.done(it); err != nil {
		e.log.Error("[QUEUE] cannot delete item", "item", it.ID.String(), "error", err)
	}
}

// stageFailed handles an error from a non-delivery step (or a queue error):
// temporary errors retry the item later without counting an attempt
// against it, permanent ones drop it.
func (e *Engine) stageFailed(st Stage, it *queue.Item, err error) {
	if sdk.IsPermanent(err) {
		e.c.Failed.Add(int64(len(it.Envelope.RcptTo)))
		e.c.Dropped.Add(1)
		e.log.Warn("[QUEUE] stage failed permanently; item dropped", "item", it.ID.String(), "stage", st.Name, "reply", sdk.AsError(err).EnhancedCode())
		e.log.Debug("[QUEUE] stage error", "error", err)
		e.drop(it)
		return
	}
	e.log.Warn("[QUEUE] stage failed temporarily; item will be retried", "item", it.ID.String(), "stage", st.Name, "error", redact(err))
	if rerr := e.retryLater(it, st, err, st.Kind == sdk.KindDeliverer && !sdk.IsTransport(err)); rerr != nil {
		e.log.Error("[QUEUE] cannot requeue item; it resumes at restart", "item", it.ID.String(), "error", rerr)
	}
}

// redact keeps a stage error's class for logs at info level: plugin error
// texts may contain peer replies that echo addresses.
func redact(err error) string {
	if sdk.IsTransport(err) {
		return "plugin unreachable"
	}
	var e *sdk.Error
	if errors.As(err, &e) {
		return fmt.Sprintf("%d %s", e.SMTPCode(), e.EnhancedCode())
	}
	return "internal error"
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
	e.queued.Add(-1)
	return nil
}

// Park persists it as waiting until it.SendAfter and hands it to the
// scheduler (a mix's hop delay, a packet's retry).
func (e *Engine) Park(it *queue.Item) error {
	it.Waiting = true
	if err := e.q.Update(it); err != nil {
		return err
	}
	e.sched.Add(it)
	return nil
}

// Hold hands an item already persisted as waiting to the scheduler.
func (e *Engine) Hold(it *queue.Item) { e.sched.Add(it) }

// Done deletes a finished item.
func (e *Engine) Done(it *queue.Item) error { return e.done(it) }

// Forget adjusts the queued count for items a caller removed itself in a
// transaction of its own (n may be negative: items added).
func (e *Engine) Forget(n int) { e.queued.Add(int64(-n)) }

// Enqueue hands an item to the workers (not released).
func (e *Engine) Enqueue(it *queue.Item) { e.enqueue(it, false) }

// RetryPacket re-queues a packet item after a temporary failure, with the
// backoff schedule; it reports false when attempts are exhausted (the
// caller drops the item).
func (e *Engine) RetryPacket(it *queue.Item) (bool, error) {
	w, ok := e.opt.Backoff.Wait(it.Attempts)
	it.Attempts++
	if !ok {
		return false, nil
	}
	it.SendAfter = time.Now().Add(w)
	return true, e.Park(it)
}

// Queue returns the engine's queue.
func (e *Engine) Queue() *queue.Queue { return e.q }

// Counters returns the engine's counters.
func (e *Engine) Counters() *stats.Counters { return e.c }

// StageIndex returns the index of the named stage, or -1.
func (e *Engine) StageIndex(name string) int { return e.stageIndex(name) }

// SetPacketHandler sets the mixnet's handler; call it before Start.
func (e *Engine) SetPacketHandler(h PacketHandler) { e.opt.Packets = h }
