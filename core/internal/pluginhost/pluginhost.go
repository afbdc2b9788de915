// Package pluginhost launches and supervises the pipeline's plugin
// processes: one process per plugin binary, serving every stage that names
// the binary (each stage its own instance in it, with its own config),
// started once and reused, restarted with backoff when it fails to start.
// A call during which the process crashed fails as a
// *pluginclient.TransportError, for every stage it serves; the process
// restarts with all its stages configured again, and the pipeline engine
// retries the items on it so no item is lost.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// Spec says how to start one stage's plugin.
type Spec struct {
	// Stage is the stage's name in the pipeline file.
	Stage string
	// Plugin is the binary's name, found in the plugin directory.
	Plugin string
	// Path is the resolved binary path.
	Path string
	// SHA256 optionally pins the binary (hex).
	SHA256 string
	// Config is the stage's config block as JSON.
	Config []byte
	// Own runs the stage in a process of its own instead of the one its
	// binary's other stages share.
	Own bool
}

// Resolve finds a plugin binary by name in dir. Names are plain file names
// (no path separators). Errors: not found, not executable.
func Resolve(dir, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("plugin name %q must be a plain file name", name)
	}
	p := filepath.Join(dir, name)
	fi, err := os.Stat(p)
	if err != nil {
		if near := closest(dir, name); near != "" {
			return "", fmt.Errorf("plugin %q not found in %s; did you mean %q?", name, dir, near)
		}
		return "", fmt.Errorf("plugin %q not found in %s (run `make build`)", name, dir)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("plugin %q in %s is not an executable file", name, dir)
	}
	return filepath.Abs(p)
}

// Backoff for restarts after failed launches: 100 ms doubling to 10 s.
const (
	restartBase = 100 * time.Millisecond
	restartMax  = 10 * time.Second
)

// Host launches the plugin processes of one daemon: stages of the same
// binary (same path and pin) share one process unless their Spec says Own.
// A plugin built with an SDK that cannot serve several stages gets a
// process per stage. Its methods are safe for concurrent use.
type Host struct {
	// log, if set, is the parent of each process's logger (named for the
	// plugin); else a process logs through its first stage's logger.
	log   hclog.Logger
	mu    sync.Mutex
	procs map[procKey]*process
	// ids numbers stage instances (unique per host).
	ids atomic.Uint64
}

type procKey struct{ path, sha string }

// NewHost returns a host with no processes. Plugin log lines go to
// log.Named(plugin name) (nil: to the logger of the process's first stage).
func NewHost(log hclog.Logger) *Host { return &Host{log: log, procs: map[procKey]*process{}} }

// process is one supervised plugin process and the stages it serves. Its
// mu guards the process's and its stages' clients: one restart at a time.
type process struct {
	host *Host
	key  procKey
	path string
	sha  string
	// plugin is the binary's name (in errors that may reach a client).
	plugin string
	log    hclog.Logger

	mu     sync.Mutex
	client *pluginclient.Client // nil while the process is down
	gen    uint64
	// failures counts failed launches in a row (restart backoff).
	failures int
	// restarts counts starts after the first.
	restarts atomic.Int64
	// stages are the stages configured in the process, in start order.
	stages []*Stage
}

// Stage is one pipeline stage served by a supervised plugin process (an
// instance of its own in a process it may share with other stages of the
// same binary).
type Stage struct {
	Spec Spec
	Info pluginclient.Info

	log  hclog.Logger
	proc *process
	id   string // instance id in the process ("" when alone in it)
	// Guarded by proc.mu: the instance's client in process generation
	// gen, whether it is configured (a restart configures it again),
	// whether it was closed.
	client     *pluginclient.Client
	gen        uint64
	configured bool
	closed     bool
	// mixState is re-sent to a restarted mixer.
	mixState *sdk.MixState
}

// Launch starts the stage's plugin process on a host of its own and reads
// its Info, without configuring it (see Host.Launch).
func Launch(spec Spec, log hclog.Logger) (*Stage, error) {
	return NewHost(nil).Launch(spec, log)
}

// Launch makes the stage an instance in its binary's process, starting
// the process if none runs, and reads the plugin's Info, without
// configuring the stage: the caller validates the stage's config block
// against Info.Schema, then calls Configure. On error nothing of the stage
// is left running.
func (h *Host) Launch(spec Spec, log hclog.Logger) (*Stage, error) {
	key := procKey{path: spec.Path, sha: spec.SHA256}
	h.mu.Lock()
	p := h.procs[key]
	if p == nil || spec.Own {
		p = &process{host: h, key: key, path: spec.Path, sha: spec.SHA256, plugin: spec.Plugin, log: log}
		if h.log != nil {
			p.log = h.log.Named(spec.Plugin)
		}
		if !spec.Own {
			h.procs[key] = p
		}
	}
	h.mu.Unlock()
	s, err := p.add(spec, log)
	if errors.Is(err, pluginclient.ErrNoInstances) {
		// A plugin built with an older SDK: one stage per process.
		spec.Own = true
		return h.Launch(spec, log)
	}
	return s, err
}

// add makes a stage in the process, starting the process if it is down.
// Errors: pluginclient.ErrNoInstances when the process already serves a
// stage and cannot serve two; a failed start.
func (p *process) add(spec Spec, log hclog.Logger) (*Stage, error) {
	s := &Stage{Spec: spec, log: log, proc: p}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client == nil || p.client.Exited() {
		if err := p.start(context.Background()); err != nil {
			p.forget()
			return nil, err
		}
	}
	if !p.client.Instances() && len(p.stages) > 0 {
		return nil, pluginclient.ErrNoInstances
	}
	if p.client.Instances() {
		s.id = fmt.Sprint(p.host.ids.Add(1))
		c, err := p.client.Instance(s.id)
		if err != nil {
			p.forget()
			return nil, err
		}
		s.client = c
	} else {
		s.client = p.client
	}
	s.gen, s.Info = p.gen, p.client.Info()
	p.stages = append(p.stages, s)
	return s, nil
}

// start launches the process (p.mu held). Stages already configured in
// it get their instance again, configured, with their mix state.
func (p *process) start(ctx context.Context) error {
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: p.path, SHA256: p.sha, Logger: p.log})
	if err != nil {
		return err
	}
	p.client = c
	p.gen++
	for _, s := range p.stages {
		if err := s.attach(ctx); err != nil {
			c.Kill()
			p.client = nil
			return err
		}
	}
	if p.gen > 1 {
		p.restarts.Add(1)
	}
	return nil
}

// attach makes the stage's instance in the current process, configured
// as before (p.mu held).
func (s *Stage) attach(ctx context.Context) error {
	p := s.proc
	c := p.client
	if s.id != "" {
		var err error
		if c, err = p.client.Instance(s.id); err != nil {
			return err
		}
	}
	s.client, s.gen = c, p.gen
	if !s.configured {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Configure(cctx, s.Spec.Stage, s.Spec.Config); err != nil {
		return fmt.Errorf("stage %s: %w", s.Spec.Stage, err)
	}
	if s.mixState != nil {
		if err := c.SetMixState(cctx, *s.mixState); err != nil {
			return fmt.Errorf("stage %s: %w", s.Spec.Stage, err)
		}
	}
	return nil
}

// forget removes a process that serves no stage from its host and stops
// it (p.mu held).
func (p *process) forget() {
	if len(p.stages) > 0 {
		return
	}
	p.host.mu.Lock()
	if p.host.procs[p.key] == p {
		delete(p.host.procs, p.key)
	}
	p.host.mu.Unlock()
	if p.client != nil {
		p.client.Kill()
		p.client = nil
	}
}

// Configure sends the stage's config block (JSON) to its instance in the
// running plugin and keeps it for restarts. A config error is returned as
// the plugin reported it (*sdk.FieldError when it names a key).
func (s *Stage) Configure(ctx context.Context, configJSON []byte) error {
	p := s.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	s.Spec.Config = configJSON
	if s.client == nil || s.gen != p.gen {
		return &pluginclient.TransportError{Err: errors.New("plugin process exited before its stage was configured")}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.client.Configure(cctx, s.Spec.Stage, configJSON); err != nil {
		return err
	}
	s.configured = true
	return nil
}

// Probe launches the plugin only to read its Info (no Configure), then
// stops it. Used by check-config and `mixmta plugins`.
func Probe(path, sha string, log hclog.Logger) (pluginclient.Info, error) {
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: path, SHA256: sha, Logger: log})
	if err != nil {
		return pluginclient.Info{}, err
	}
	defer c.Kill()
	return c.Info(), nil
}

// Healthy reports whether the stage's plugin process is running.
func (s *Stage) Healthy() bool {
	s.proc.mu.Lock()
	defer s.proc.mu.Unlock()
	return s.proc.client != nil && !s.proc.client.Exited()
}

// Restarts counts the restarts of the stage's process since start (each
// one configures the stage again); stages sharing a process (equal
// Process) count the same restarts.
func (s *Stage) Restarts() int64 { return s.proc.restarts.Load() }

// Pid returns the current plugin process id.
func (s *Stage) Pid() int {
	s.proc.mu.Lock()
	defer s.proc.mu.Unlock()
	if s.proc.client == nil {
		return 0
	}
	return s.proc.client.Pid()
}

// Process identifies the stage's plugin process: stages with equal values
// share one, so a crash of it fails calls of each of them.
func (s *Stage) Process() any { return s.proc }

// Host returns the host that launched the stage: a stage launched through
// it shares the stage's process when it names the same binary.
func (s *Stage) Host() *Host { return s.proc.host }

// Close ends the stage; the process stops with its last stage.
func (s *Stage) Close() {
	p := s.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	p.stages = slices.DeleteFunc(p.stages, func(x *Stage) bool { return x == s })
	if s.client != nil && s.id != "" {
		s.client.Close()
	}
	s.client = nil
	p.forget()
}

var errClosed = errors.New("pluginhost: stage closed")

// current returns the stage's live client and the process generation,
// restarting the process (with backoff) when it is gone.
func (s *Stage) current(ctx context.Context) (*pluginclient.Client, uint64, error) {
	p := s.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if s.closed {
			return nil, 0, errClosed
		}
		// A start attaches every stage of the process, so a live process
		// of another generation than the stage's does not occur.
		if p.client != nil && !p.client.Exited() && s.gen == p.gen {
			return s.client, s.gen, nil
		}
		if p.client != nil {
			p.client.Kill()
			p.client = nil
		}
		if p.failures > 0 {
			wait := min(restartBase<<min(p.failures-1, 20), restartMax)
			p.mu.Unlock()
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				p.mu.Lock()
				return nil, 0, ctx.Err()
			}
			p.mu.Lock()
			if p.client != nil && !p.client.Exited() {
				continue
			}
		}
		if err := p.start(ctx); err != nil {
			p.failures++
			s.log.Error("plugin restart failed", "plugin", p.plugin, "stage", s.Spec.Stage, "attempt", p.failures, "error", err)
			if p.failures >= 8 {
				// Not a crash on the item being called: the stage is down
				// (Healthy reports false), so the engine does not count it
				// against the item.
				// The cause is in the log line above; the message may reach
				// an SMTP client (a checker at RCPT or DATA): no Go error
				// text, no paths.
				return nil, 0, sdk.Temporary(451, "3.0", "plugin %s cannot be started", p.plugin)
			}
			continue
		}
		p.failures = 0
		names := make([]string, 0, len(p.stages))
		for _, x := range p.stages {
			names = append(names, x.Spec.Stage)
		}
		s.log.Warn("plugin restarted", "plugin", p.plugin, "stages", strings.Join(names, ","), "pid", p.client.Pid())
		return s.client, s.gen, nil
	}
}

// markDead records that the process of generation gen failed at transport
// level, so the next call of any of its stages restarts it. A crash during
// a call does not advance the restart backoff: the engine counts it
// against the item that was called (and quarantines an item that crashes
// the plugin again), so one poison item costs at most a few restarts and
// never stalls the others behind a growing backoff.
func (s *Stage) markDead(gen uint64) {
	p := s.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gen == gen && p.client != nil {
		p.client.Kill()
		p.client = nil
	}
}

// call runs fn on the live client, restarting the process first if it is
// gone. A transport failure during the call (the process crashed or was
// killed) is returned, not retried here: the caller retries the item and
// counts the crash against it. A call cut by ctx (timeout) fails with a
// temporary *sdk.Error instead.
func call[T any](ctx context.Context, s *Stage, fn func(*pluginclient.Client) (T, error)) (T, error) {
	var zero T
	c, gen, err := s.current(ctx)
	if err != nil {
		return zero, err
	}
	v, err := fn(c)
	if err == nil || !pluginclient.IsTransport(err) {
		return v, err
	}
	if ctx.Err() != nil {
		// A timeout or cancel, not a crash: the process lives on, and the
		// caller must not count this as a crash against the item.
		why := "timed out"
		if errors.Is(ctx.Err(), context.Canceled) {
			why = "cancelled"
		}
		return zero, sdk.Temporary(451, "4.0", "plugin %s: call %s", s.Spec.Plugin, why)
	}
	s.log.Warn("plugin call failed; the plugin restarts at the next call", "stage", s.Spec.Stage, "error", err)
	s.markDead(gen)
	return zero, err
}

// Check runs the stage as a checker.
func (s *Stage) Check(ctx context.Context, m *sdk.Message) error {
	_, err := call(ctx, s, func(c *pluginclient.Client) (struct{}, error) { return struct{}{}, c.Check(ctx, m) })
	return err
}

// Transform runs the stage as a transformer.
func (s *Stage) Transform(ctx context.Context, m *sdk.Message) (*sdk.Change, error) {
	return call(ctx, s, func(c *pluginclient.Client) (*sdk.Change, error) { return c.Transform(ctx, m) })
}

// Route runs the stage as a router.
func (s *Stage) Route(ctx context.Context, m *sdk.Message) ([]sdk.Route, error) {
	return call(ctx, s, func(c *pluginclient.Client) ([]sdk.Route, error) { return c.Route(ctx, m) })
}

// Delay runs the stage as a delayer.
func (s *Stage) Delay(ctx context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	return call(ctx, s, func(c *pluginclient.Client) ([]time.Duration, error) { return c.Delay(ctx, req) })
}

// Deliver runs the stage as a deliverer.
func (s *Stage) Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	return call(ctx, s, func(c *pluginclient.Client) ([]sdk.RcptResult, error) { return c.Deliver(ctx, m) })
}

// SetMixState sends the mixer's keys and directory, and keeps them to send
// again to a restarted process.
func (s *Stage) SetMixState(ctx context.Context, st sdk.MixState) error {
	s.proc.mu.Lock()
	s.mixState = &st
	s.proc.mu.Unlock()
	_, err := call(ctx, s, func(c *pluginclient.Client) (struct{}, error) { return struct{}{}, c.SetMixState(ctx, st) })
	return err
}

// Mix runs the stage as a mixer on one packet.
func (s *Stage) Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error) {
	return call(ctx, s, func(c *pluginclient.Client) (*sdk.MixResult, error) { return c.Mix(ctx, packet) })
}

// Cover asks the mixer for a cover packet.
func (s *Stage) Cover(ctx context.Context, k sdk.CoverKind) (*sdk.Packet, error) {
	return call(ctx, s, func(c *pluginclient.Client) (*sdk.Packet, error) { return c.Cover(ctx, k) })
}

// Assemble asks the mixer to parse a reassembled message.
func (s *Stage) Assemble(ctx context.Context, data []byte) (*sdk.Message, error) {
	return call(ctx, s, func(c *pluginclient.Client) (*sdk.Message, error) { return c.Assemble(ctx, data) })
}

// closest returns the executable in dir whose name is nearest to name (at
// most 3 edits, or one is a prefix of the other), or "".
func closest(dir, name string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	best, bestD := "", 4
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 || e.Name() == "mixmta" {
			continue
		}
		d := editDistance(strings.ToLower(name), strings.ToLower(e.Name()))
		if strings.HasPrefix(e.Name(), name) || strings.HasPrefix(name, e.Name()) {
			d = min(d, 1)
		}
		if d < bestD || (d == bestD && e.Name() < best) {
			best, bestD = e.Name(), d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
