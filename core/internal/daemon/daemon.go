// Package daemon assembles a running mixmta from a loaded config: it opens
// the queue, starts and configures every stage's plugin, builds the
// pipeline engine and the SMTP listeners, and serves until told to stop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/smtpd"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// Version is the daemon's version, set by the command (mixmta_build_info).
var Version = "dev"

// Daemon is a running mixmta.
type Daemon struct {
	cfg       *config.Config
	log       hclog.Logger
	q         *queue.Queue
	stages    []*pluginhost.Stage
	engine    *pipeline.Engine
	listeners []*smtpd.Server
	counters  *stats.Counters
	mix       *mixParts
	tor       *torParts
	// cancel stops the engine, the mix node and the stats loop.
	cancel  context.CancelFunc
	admin   *http.Server
	metrics *http.Server
	// spaceLow: the data dir's free space was below the reserve at the
	// last check (logged on each change).
	spaceLow atomic.Bool
	// queueFull: the queue held queue.max_items at the last check.
	queueFull atomic.Bool
	// mixFull: the mix node refused packets from its links at the last
	// check (linkFull).
	mixFull atomic.Bool
}

// StartStages launches, checks and configures every stage's plugin: one
// process per plugin binary, serving each stage that names it (see
// pluginhost.Host). Config errors are reported as FILE:LINE. On error,
// already started plugins are stopped.
func StartStages(ctx context.Context, cfg *config.Config, log hclog.Logger) ([]*pluginhost.Stage, []pipeline.Stage, error) {
	var started []*pluginhost.Stage
	var stages []pipeline.Stage
	fail := func(err error) ([]*pluginhost.Stage, []pipeline.Stage, error) {
		for _, s := range started {
			s.Close()
		}
		return nil, nil, err
	}
	host := pluginhost.NewHost(log)
	for _, st := range cfg.Pipeline {
		ps, err := startStageOn(ctx, cfg, host, st, log)
		if err != nil {
			return fail(err)
		}
		started = append(started, ps)
		kind, err := stageKind(ps.Info)
		if err != nil {
			return fail(fmt.Errorf("%s:%d: stage %q: %w", cfg.Path, st.Line, st.Name, err))
		}
		stages = append(stages, pipeline.Stage{Name: st.Name, Kind: kind, Needs: ps.Info.Needs, Impl: ps,
			Sanitizes: ps.Info.Can(sdk.CapSanitizes), Packets: kind == sdk.KindRouter && ps.Info.Has(sdk.KindMixer)})
	}
	if err := pipeline.ValidateOrder(stages); err != nil {
		var oe *pipeline.OrderError
		if errors.As(err, &oe) {
			return fail(fmt.Errorf("%s:%d: pipeline: %w", cfg.Path, cfg.Pipeline[oe.Index].Line, err))
		}
		return fail(fmt.Errorf("%s: pipeline: %w", cfg.Path, err))
	}
	return started, stages, nil
}

// startStage launches one stage's plugin in a process of its own,
// validates its config block against the schema the plugin reports, and
// configures it. Errors are FILE:LINE.
func startStage(ctx context.Context, cfg *config.Config, st config.Stage, log hclog.Logger) (*pluginhost.Stage, error) {
	return startStageOn(ctx, cfg, pluginhost.NewHost(log), st, log)
}

// startStageOn is startStage in the process host runs for the stage's
// binary, if any.
func startStageOn(ctx context.Context, cfg *config.Config, host *pluginhost.Host, st config.Stage, log hclog.Logger) (*pluginhost.Stage, error) {
	where := fmt.Sprintf("%s:%d: stage %q", cfg.Path, st.Line, st.Name)
	path, err := pluginhost.Resolve(cfg.PluginDir, st.Plugin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	pin := cfg.Plugins[st.Plugin].SHA256
	ps, err := host.Launch(pluginhost.Spec{Stage: st.Name, Plugin: st.Plugin, Path: path, SHA256: pin, Own: st.Process == "own"}, log.Named(st.Name))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := config.ValidateBlock(cfg.Path, st, ps.Info.Schema); err != nil {
		ps.Close()
		return nil, err
	}
	js, err := config.BlockJSON(st)
	if err == nil {
		js, err = torStageConfig(cfg, st, ps.Info.Schema, js)
	}
	if err == nil {
		js, err = mixStageConfig(cfg, st, ps.Info, js)
	}
	if err != nil {
		ps.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := ps.Configure(ctx, js); err != nil {
		ps.Close()
		return nil, config.StageError(cfg.Path, st, err)
	}
	return ps, nil
}

// stageKind is the kind a stage has in the pipeline order. A plugin that
// is both a router and a mixer (sphinx) is a router there; its mixer kind
// serves the mix section.
func stageKind(info pluginclient.Info) (sdk.Kind, error) {
	var kinds []sdk.Kind
	for _, k := range info.Kinds {
		if k != sdk.KindMixer {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 1 {
		return kinds[0], nil
	}
	return "", fmt.Errorf("plugin %s offers kinds %v; a pipeline stage needs exactly one of checker, transformer, router, delayer, deliverer", info.Name, info.Kinds)
}

// Start opens the queue, starts the plugins, the engine and the listeners.
func Start(parent context.Context, cfg *config.Config, log hclog.Logger) (*Daemon, error) {
	ctx, cancel := context.WithCancel(parent)
	d := &Daemon{cfg: cfg, log: log, counters: &stats.Counters{}, cancel: cancel}
	ok := false
	defer func() {
		if !ok {
			cancel()
			d.tor.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	if cfg.Tor != nil {
		tp, err := startTor(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		d.tor = tp
	}
	q, err := queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{GCInterval: cfg.Queue.GCInterval.D(), Logger: log.Named("queue")})
	if err != nil {
		return nil, err
	}
	d.q = q
	d.HasSpace(0) // logs at once when the node starts on a full disk
	started, stages, err := StartStages(ctx, cfg, log)
	if err != nil {
		q.Close()
		return nil, err
	}
	d.stages = started
	schedule := make([]time.Duration, len(cfg.Retry.Schedule))
	for i, s := range cfg.Retry.Schedule {
		schedule[i] = s.D()
	}
	d.engine, err = pipeline.New(q, stages, pipeline.Options{
		Pool: pipeline.Pool{Window: cfg.Scheduler.Window.D(), MinPool: cfg.Scheduler.MinPool, SendFraction: cfg.Scheduler.SendFraction, MaxBatch: cfg.Scheduler.MaxBatch},
		Backoff: pipeline.Backoff{MaxAttempts: cfg.Retry.MaxAttempts, Base: cfg.Retry.Base.D(), Factor: cfg.Retry.Factor,
			Max: cfg.Retry.Max.D(), Jitter: cfg.Retry.Jitter, Schedule: schedule},
		MaxLifetime:  cfg.Queue.MaxLifetime.D(),
		Workers:      cfg.Queue.Workers,
		Concurrency:  cfg.Scheduler.Concurrency,
		Bounce:       cfg.Retry.Bounce,
		MaxItems:     cfg.Queue.MaxItems,
		LogAddresses: cfg.Log.Addresses,
		Hostname:     cfg.Hostname,
		Logger:       log.Named("pipeline"),
		Counters:     d.counters,
	})
	if err != nil {
		d.closeStages()
		q.Close()
		return nil, fmt.Errorf("%s: %w", cfg.Path, err)
	}
	if cfg.Mix != nil {
		if err := d.startMix(ctx, started); err != nil {
			d.closeStages()
			q.Close()
			return nil, err
		}
	}
	var checkers []smtpd.Checker
	if d.mix != nil {
		checkers = append(checkers, sendQueueChecker{d.mix.node})
	}
	for _, st := range d.engine.Checkers() {
		checkers = append(checkers, namedChecker{st})
	}
	for _, lc := range cfg.Listeners {
		srv, err := smtpd.New(lc, cfg.Hostname, d, checkers, d.counters, log)
		if err == nil {
			err = srv.Listen()
		}
		if err != nil {
			d.shutdownListeners()
			d.closeStages()
			q.Close()
			return nil, err
		}
		d.listeners = append(d.listeners, srv)
	}
	if err := d.engine.Start(ctx); err != nil {
		d.shutdownListeners()
		d.mix.close()
		d.closeStages()
		q.Close()
		return nil, err
	}
	if d.mix != nil {
		if err := d.mix.run(ctx, cfg.Mix, log); err != nil {
			d.Stop(context.Background())
			return nil, err
		}
	}
	if err := d.publishOnions(); err != nil {
		d.Stop(context.Background())
		return nil, err
	}
	for _, l := range d.listeners {
		go func() {
			if err := l.Serve(); err != nil {
				log.Error("[SMTP] listener stopped", "error", err)
			}
		}()
		log.Info("[SMTP] listening", "address", l.Addr().String())
	}
	if err := d.startAdmin(); err != nil {
		log.Warn("admin socket unavailable; `mixmta queue` needs the daemon stopped", "error", err)
	}
	if err := d.startMetrics(); err != nil {
		d.Stop(context.Background())
		return nil, err
	}
	go d.statsLoop(ctx)
	d.startCover(ctx)
	ok = true
	return d, nil
}

type namedChecker struct{ st pipeline.Stage }

func (n namedChecker) Name() string { return n.st.Name }
func (n namedChecker) Check(ctx context.Context, m *sdk.Message) error {
	return n.st.Impl.Check(ctx, n.st.Needs.Mask(m))
}

// NewBody implements smtpd.Sink.
func (d *Daemon) NewBody() (*queue.BodyWriter, error) { return d.q.NewBody() }

// AcceptBody implements smtpd.Sink.
func (d *Daemon) AcceptBody(env sdk.Envelope, header []byte, body *queue.BodyWriter, received time.Time) (*queue.Item, error) {
	return d.q.AcceptBody(env, header, body, received)
}

// Submit implements smtpd.Sink.
func (d *Daemon) Submit(it *queue.Item) { d.engine.Submit(it) }

// Listeners returns the SMTP listeners (for tests: bound addresses).
func (d *Daemon) Listeners() []*smtpd.Server { return d.listeners }

// Counters returns the daemon's counters.
func (d *Daemon) Counters() *stats.Counters { return d.counters }

func (d *Daemon) gauges() stats.Gauges {
	return stats.Gauges{
		Queued:  d.engine.Queued,
		Delayed: d.engine.Delayed,
		PluginsHealthy: func() (int, int) {
			h := 0
			for _, s := range d.stages {
				if s.Healthy() {
					h++
				}
			}
			return h, len(d.stages)
		},
	}
}

func (d *Daemon) statsLoop(ctx context.Context) {
	iv := d.cfg.Log.StatsInterval.D()
	if iv <= 0 {
		iv = time.Minute
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			var restarts int64
			counted := map[any]bool{}
			for _, s := range d.stages {
				if !counted[s.Process()] {
					counted[s.Process()] = true
					restarts += s.Restarts()
				}
			}
			d.counters.PluginRestarts.Store(restarts)
			line := stats.Line(d.counters, d.gauges())
			if d.mix != nil {
				line += " " + d.mix.node.StatsLine()
			}
			d.log.Info("[STATS] " + line)
			waiting, pooled := d.engine.Scheduler().Len()
			d.log.Info("[POOL] " + fmt.Sprintf("waiting=%d pooled=%d released=%d", waiting, pooled, d.engine.Scheduler().Released()))
		}
	}
}

func (d *Daemon) startMetrics() error {
	if d.cfg.Metrics.Address == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	stats.Register(reg, d.counters, d.gauges())
	stats.RegisterBuild(reg, Version, runtime.Version())
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if d.mix != nil {
		s := &d.mix.node.Stats
		stats.RegisterMix(reg, stats.MixStats{Received: &s.Received, Forwarded: &s.Forwarded, Exited: &s.Exited, Replays: &s.Replays,
			Dropped: &s.Dropped, CoverSent: &s.CoverSent, CoverDropped: &s.CoverDropped, LoopsSent: &s.LoopsSent, LoopsBack: &s.LoopsBack,
			LoopsLost: &s.LoopsLost, Assembled: &s.Assembled, Duplicates: &s.Duplicates, HealthyNodes: d.mix.node.HealthyNodes})
		d.mix.node.Register(reg)
	}
	ln, err := net.Listen("tcp", d.cfg.Metrics.Address)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	d.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go d.metrics.Serve(ln)
	return nil
}

func (d *Daemon) shutdownListeners() {
	for _, l := range d.listeners {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = l.Shutdown(ctx)
		cancel()
	}
}

func (d *Daemon) closeStages() {
	for _, s := range d.stages {
		s.Close()
	}
}

// Stop shuts down gracefully: listeners stop accepting and open sessions
// get until ctx's deadline; the engine stops taking items and its workers
// finish the current one; then plugins stop and the queue is synced and
// closed. Items not finished resume at the next start.
func (d *Daemon) Stop(ctx context.Context) {
	d.shutdownListeners()
	d.cancel()
	if d.admin != nil {
		d.admin.Close()
	}
	if d.metrics != nil {
		d.metrics.Close()
	}
	done := make(chan struct{})
	go func() { d.engine.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		d.log.Warn("shutdown: in-flight items left to resume at next start", "count", d.engine.InFlight())
	}
	d.mix.close()
	d.closeStages()
	d.tor.close()
	if err := d.q.Close(); err != nil {
		d.log.Error("closing queue", "error", err)
	}
}

// StartStage launches one stage's plugin, validates its config block
// against the schema the plugin reports and configures it, as serve does;
// for tools that run single stages (mixmta simulate samples the profile's
// delay stages). Errors are FILE:LINE.
func StartStage(ctx context.Context, cfg *config.Config, st config.Stage, log hclog.Logger) (*pluginhost.Stage, error) {
	return startStage(ctx, cfg, st, log)
}
