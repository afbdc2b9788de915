// Package pluginhost launches and supervises the pipeline's plugin
// processes: one process per stage, started once and reused, restarted with
// backoff when it fails to start; a call during which it crashed fails as
// a *pluginclient.TransportError and the pipeline engine retries the item
// on the new process so no item is lost.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// Stage is a supervised plugin process serving one stage.
type Stage struct {
	Spec Spec
	Info pluginclient.Info

	log    hclog.Logger
	mu     sync.Mutex
	client *pluginclient.Client
	gen    uint64
	// failures counts failed launches in a row (restart backoff).
	failures int
	restarts atomic.Int64
	closed   bool
	// mixState is re-sent to a restarted mixer.
	mixState *sdk.MixState
}

// Launch starts the plugin process and reads its Info, without configuring
// it: the caller validates the stage's config block against Info.Schema,
// then calls Configure. On error nothing is left running.
func Launch(spec Spec, log hclog.Logger) (*Stage, error) {
	s := &Stage{Spec: spec, log: log}
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: spec.Path, SHA256: spec.SHA256, Logger: log})
	if err != nil {
		return nil, err
	}
	s.client, s.Info = c, c.Info()
	return s, nil
}

// Configure sends the stage's config block (JSON) to the running plugin
// and keeps it for restarts. A config error is returned as the plugin
// reported it (*sdk.FieldError when it names a key).
func (s *Stage) Configure(ctx context.Context, configJSON []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Spec.Config = configJSON
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.client.Configure(cctx, s.Spec.Stage, configJSON)
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

func (s *Stage) launch(ctx context.Context) (*pluginclient.Client, error) {
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: s.Spec.Path, SHA256: s.Spec.SHA256, Logger: s.log})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Configure(cctx, s.Spec.Stage, s.Spec.Config); err != nil {
		c.Kill()
		return nil, err
	}
	if s.mixState != nil {
		if err := c.SetMixState(cctx, *s.mixState); err != nil {
			c.Kill()
			return nil, err
		}
	}
	return c, nil
}

// Healthy reports whether the plugin process is running.
func (s *Stage) Healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client != nil && !s.client.Exited()
}

// Restarts counts restarts since start.
func (s *Stage) Restarts() int64 { return s.restarts.Load() }

// Pid returns the current plugin process id.
func (s *Stage) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		return 0
	}
	return s.client.Pid()
}

// Close kills the plugin process.
func (s *Stage) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.client != nil {
		s.client.Kill()
		s.client = nil
	}
}

var errClosed = errors.New("pluginhost: stage closed")

// current returns the live client and its generation, restarting the
// process (with backoff) when it is gone.
func (s *Stage) current(ctx context.Context) (*pluginclient.Client, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return nil, 0, errClosed
		}
		if s.client != nil && !s.client.Exited() {
			return s.client, s.gen, nil
		}
		if s.client != nil {
			s.client.Kill()
			s.client = nil
		}
		if s.failures > 0 {
			wait := min(restartBase<<min(s.failures-1, 20), restartMax)
			s.mu.Unlock()
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				s.mu.Lock()
				return nil, 0, ctx.Err()
			}
			s.mu.Lock()
			if s.client != nil && !s.client.Exited() {
				continue
			}
		}
		c, err := s.launch(ctx)
		if err != nil {
			s.failures++
			s.log.Error("plugin restart failed", "stage", s.Spec.Stage, "attempt", s.failures, "error", err)
			if s.failures >= 8 {
				// Not a crash on the item being called: the stage is down
				// (Healthy reports false), so the engine does not count it
				// against the item.
				// The cause is in the log line above; the message may reach
				// an SMTP client (a checker at RCPT or DATA): no Go error
				// text, no paths.
				return nil, 0, sdk.Temporary(451, "3.0", "plugin %s cannot be started", s.Spec.Plugin)
			}
			continue
		}
		s.client = c
		s.failures = 0
		s.gen++
		s.restarts.Add(1)
		s.log.Warn("plugin restarted", "stage", s.Spec.Stage, "pid", c.Pid())
		return c, s.gen, nil
	}
}

// markDead records that the client of generation gen failed at transport
// level, so the next call restarts it. A crash during a call does not
// advance the restart backoff: the engine counts it against the item that
// was called (and quarantines an item that crashes the plugin again), so
// one poison item costs at most a few restarts and never stalls the
// others behind a growing backoff.
func (s *Stage) markDead(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == gen && s.client != nil {
		s.client.Kill()
		s.client = nil
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
	s.mu.Lock()
	s.mixState = &st
	s.mu.Unlock()
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
