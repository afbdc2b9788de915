package simulate

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/daemon"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/sdk"
)

// DefaultFragmentPayload is the message bytes one 64 KiB Sphinx packet
// carries (the sphinx plugin's fragment size).
const DefaultFragmentPayload = 65200

// pluginSampler draws delays from a running delay plugin, in batches, so the
// simulation samples exactly the distribution the profile ships.
type pluginSampler struct {
	ctx   context.Context
	stage *pluginhost.Stage
	scale float64
	buf   []float64
}

const sampleBatch = 1 << 14

func (p *pluginSampler) Next() (float64, error) {
	if len(p.buf) == 0 {
		ds, err := p.stage.Delay(p.ctx, sdk.DelayRequest{Count: sampleBatch})
		if err != nil {
			return 0, fmt.Errorf("simulate: sampling stage %q: %w", p.stage.Spec.Stage, err)
		}
		for _, d := range ds {
			p.buf = append(p.buf, d.Seconds()*p.scale)
		}
	}
	d := p.buf[0]
	p.buf = p.buf[1:]
	return d, nil
}

// Profile is a network built from a pipeline file, with the plugins it
// started to sample delays; Close stops them.
type Profile struct {
	Network Network
	stages  []*pluginhost.Stage
}

// Close stops the delay plugins.
func (p *Profile) Close() {
	for _, s := range p.stages {
		s.Close()
	}
}

// LoadProfile reads what a simulation needs from a mix node's pipeline
// file: the hops of its router stage and the size classes its
// max_message_bytes implies (one path per message, as the sphinx router
// does), its delay stages (the one before the router is the message delay,
// one after it the exit's delay), mix.hop_delay, the scheduler's pool,
// mix.send_rate (λ_P) and mix.cover. Every node of the simulated network
// runs this profile. delayScale multiplies every sampled delay (1 = as
// configured). Errors: no mix section, no router, a plugin that cannot
// start.
func LoadProfile(ctx context.Context, cfg *config.Config, delayScale float64, log hclog.Logger) (*Profile, error) {
	if cfg.Mix == nil {
		return nil, fmt.Errorf("%s: no mix section: simulate needs a mix node's profile", cfg.Path)
	}
	p := &Profile{}
	net := &p.Network
	net.Pool = Pool{Window: cfg.Scheduler.Window.D().Seconds(), MinPool: cfg.Scheduler.MinPool, SendFraction: cfg.Scheduler.SendFraction}
	net.DropRate, net.LoopRate = cfg.Mix.Cover.DropRate, cfg.Mix.Cover.LoopRate
	net.SendRate = cfg.Mix.SendRate
	net.FragmentPayload = DefaultFragmentPayload
	start := func(st config.Stage) (*pluginhost.Stage, error) {
		s, err := daemon.StartStage(ctx, cfg, st, log)
		if err == nil {
			p.stages = append(p.stages, s)
		}
		return s, err
	}
	sampler := func(s *pluginhost.Stage) Sampler {
		return &pluginSampler{ctx: ctx, stage: s, scale: delayScale}
	}
	routed := false
	for _, st := range cfg.Pipeline {
		s, err := start(st)
		if err != nil {
			p.Close()
			return nil, err
		}
		switch {
		case slices.Contains(s.Info.Kinds, sdk.KindRouter):
			routed = true
			h, err := routerInt(st, s.Info.Schema, "hops")
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("%s:%d: stage %q: %w", cfg.Path, st.Line, st.Name, err)
			}
			net.Hops = h
			// The sphinx router pads a message to a power of two of
			// fragments, at most what the exit accepts, and sends every
			// fragment of it over one path.
			if m, err := routerInt(st, s.Info.Schema, "max_message_bytes"); err == nil {
				net.SizeClasses = fragmentClasses(int64(m))
			}
			net.SharedPath = true
		case slices.Contains(s.Info.Kinds, sdk.KindDelayer) && !routed:
			net.MsgDelay = sampler(s)
		case slices.Contains(s.Info.Kinds, sdk.KindDelayer):
			net.ExitDelay = sampler(s)
		default:
			// Only delay and router stages matter to the simulation.
			s.Close()
			p.stages = p.stages[:len(p.stages)-1]
		}
	}
	if !routed {
		p.Close()
		return nil, fmt.Errorf("%s: the pipeline has no router stage (e.g. sphinx)", cfg.Path)
	}
	hop, err := start(cfg.Mix.HopDelay)
	if err != nil {
		p.Close()
		return nil, err
	}
	net.HopDelay = sampler(hop)
	return p, nil
}

// fragmentClasses are the sizes (bytes of fragment payload) the sphinx
// router pads a message to: 1, 2, 4, ... fragments, up to the fragments of
// the largest inner message an exit accepts (max_message_bytes plus the
// envelope allowance of 1 MiB and 47 bytes of fields).
func fragmentClasses(maxMessage int64) []int {
	limit := int((maxMessage + 1<<20 + 47 + DefaultFragmentPayload - 1) / DefaultFragmentPayload)
	var out []int
	for c := 1; ; c *= 2 {
		out = append(out, min(c, limit)*DefaultFragmentPayload)
		if c >= limit {
			return out
		}
	}
}

// routerInt reads an integer key of the router's config block, or its
// default from the schema.
func routerInt(st config.Stage, schema *sdk.Schema, key string) (int, error) {
	js, err := config.BlockJSON(st)
	if err != nil {
		return 0, err
	}
	var block map[string]any
	if len(js) > 0 && string(js) != "null" {
		if err := json.Unmarshal(js, &block); err != nil {
			return 0, err
		}
	}
	v, ok := block[key]
	if !ok && schema != nil && schema.Properties[key] != nil {
		v = schema.Properties[key].Default
	}
	h, ok := v.(float64)
	if !ok || h < 1 || h != math.Trunc(h) {
		return 0, fmt.Errorf("the router has no %q (an integer >= 1)", key)
	}
	return int(h), nil
}

// BuiltinSize draws a message size from a mixture meant to look like
// remailer and personal mail: 70% text of 1-8 KiB, 25% 8-64 KiB, 5% with
// attachments of 64 KiB-2 MiB, each log-uniform.
func BuiltinSize(r *rand.Rand) int {
	logUniform := func(lo, hi float64) int {
		return int(math.Exp(math.Log(lo) + r.Float64()*(math.Log(hi)-math.Log(lo))))
	}
	switch u := r.Float64(); {
	case u < 0.70:
		return logUniform(1<<10, 8<<10)
	case u < 0.95:
		return logUniform(8<<10, 64<<10)
	default:
		return logUniform(64<<10, 2<<20)
	}
}

// SizesFromFile reads message sizes (bytes, one per line; blank lines and
// lines starting with # skipped) and returns a sampler of that empirical
// distribution. Errors: unreadable file, a line that is not a positive
// integer (with its line number), no sizes.
func SizesFromFile(path string) (func(*rand.Rand) int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sizes []int
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		n, err := strconv.Atoi(t)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s:%d: %q is not a size in bytes", path, line, t)
		}
		sizes = append(sizes, n)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("%s: no sizes", path)
	}
	return func(r *rand.Rand) int { return sizes[r.IntN(len(sizes))] }, nil
}
