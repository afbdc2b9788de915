package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/simulate"
)

// simOptions are the flags of mixmta simulate.
type simOptions struct {
	nodes, exits, users, hops int
	rate                      float64 // messages per user per day
	duration, warmup          time.Duration
	compromised               string
	sizes                     string
	sendRate, dropRate        float64
	loopRate, delayScale      float64
	sizeClasses               string
	pathPerFragment, asJSON   bool
	perMessage                bool
	seed                      uint64
	plot, sweep               string
}

func simulateCmd(load func() (*config.Config, error)) *cobra.Command {
	var o simOptions
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "measure the sender anonymity a mix profile gives: a simulated network of nodes running it, and a global passive adversary",
		Long: `simulate runs a discrete-event simulation of a mixnet whose nodes all run
the profile given with -c (its delay stages' own plugins are sampled, its
pool, hops and cover rates used), under a workload of users submitting
mail, and reports the sender anonymity in bits (the entropy of the
adversary's distribution over senders), the share of messages traced end
to end, latency and cover overhead, for a global passive observer alone
and together with a fraction of compromised nodes.

--sweep PARAM=V1,V2,... runs once per value (PARAM: send_rate, drop_rate,
loop_rate, delay_scale, users, nodes) and --plot FILE (.svg or .png) draws
the mean entropy against it.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			return runSimulate(c, cfg, o, c.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 20, "mix nodes in the network")
	f.IntVar(&o.exits, "exits", 0, "exit nodes (0: every node if the profile's mix.exit is set, else half)")
	f.IntVar(&o.users, "users", 10, "users per node")
	f.Float64Var(&o.rate, "rate", 4, "messages per user per day (Poisson)")
	f.DurationVar(&o.duration, "duration", 7*24*time.Hour, "simulated time")
	f.DurationVar(&o.warmup, "warmup", 0, "messages submitted before this are not scored (0: a fifth of --duration)")
	f.StringVar(&o.compromised, "compromised", "0,0.2", "fractions of compromised nodes, one adversary each")
	f.StringVar(&o.sizes, "sizes", "builtin", `message sizes: "builtin" or a file with one size in bytes per line`)
	f.IntVar(&o.hops, "hops", 0, "override the router's hops")
	f.Float64Var(&o.sendRate, "send-rate", 0, "override the Loopix sending rate λ_P, packets/s per node (0 = own packets leave at once)")
	f.Float64Var(&o.dropRate, "drop-rate", 0, "override mix.cover.drop_rate, packets/s")
	f.Float64Var(&o.loopRate, "loop-rate", 0, "override mix.cover.loop_rate, packets/s")
	f.Float64Var(&o.delayScale, "delay-scale", 1, "multiply every sampled delay")
	f.StringVar(&o.sizeClasses, "size-classes", "", "override the size classes: bytes, comma-separated, ascending (messages are padded to the next class; \"none\": no padding)")
	f.BoolVar(&o.pathPerFragment, "path-per-fragment", false, "every fragment takes a path of its own to the message's exit (the profile's router uses one path per message)")
	f.Uint64Var(&o.seed, "seed", 1, "random seed (the same seed gives the same run)")
	f.BoolVar(&o.asJSON, "json", false, "print JSON instead of text")
	f.BoolVar(&o.perMessage, "messages", false, "with --json: also every scored message's entropy, its sender's probability and whether it was traced, per adversary")
	f.StringVar(&o.plot, "plot", "", "write a plot of entropy against the --sweep parameter (.svg or .png)")
	f.StringVar(&o.sweep, "sweep", "", "PARAM=V1,V2,...: one run per value")
	return cmd
}

// simResult is one run: the costs and one summary per adversary.
type simResult struct {
	Param       string             `json:"param,omitempty"`
	Value       float64            `json:"value,omitempty"`
	Network     simNetwork         `json:"network"`
	Costs       simulate.Costs     `json:"costs"`
	Adversaries []simulate.Summary `json:"adversaries"`
	// Messages[i] are adversary i's per-message results (--messages).
	Messages [][]simulate.Result `json:"messages,omitempty"`
}

// simNetwork is the part of the configuration a reader wants to see next
// to the figures.
type simNetwork struct {
	Nodes        int     `json:"nodes"`
	Exits        int     `json:"exits"`
	Hops         int     `json:"hops"`
	UsersPerNode int     `json:"users_per_node"`
	RatePerDay   float64 `json:"messages_per_user_per_day"`
	SendRate     float64 `json:"send_rate"`
	DropRate     float64 `json:"drop_rate"`
	LoopRate     float64 `json:"loop_rate"`
	DelayScale   float64 `json:"delay_scale"`
	DurationS    float64 `json:"duration_s"`
}

func runSimulate(c *cobra.Command, cfg *config.Config, o simOptions, w io.Writer) error {
	if o.plot != "" && o.sweep == "" {
		return fmt.Errorf("--plot needs --sweep PARAM=V1,V2,...")
	}
	param, values, err := parseSweep(o.sweep)
	if err != nil {
		return err
	}
	fracs, err := parseFloats(o.compromised)
	if err != nil {
		return fmt.Errorf("--compromised: %w", err)
	}
	for _, f := range fracs {
		if f < 0 || f > 1 {
			return fmt.Errorf("--compromised: %v is not a fraction in [0, 1]", f)
		}
	}
	size := simulate.BuiltinSize
	if o.sizes != "builtin" {
		if size, err = simulate.SizesFromFile(o.sizes); err != nil {
			return fmt.Errorf("--sizes: %w", err)
		}
	}
	var classes []int
	if o.sizeClasses != "" && o.sizeClasses != "none" {
		if classes, err = parseInts(o.sizeClasses); err != nil {
			return fmt.Errorf("--size-classes: %w", err)
		}
	}
	ctx := context.Background()
	log := newLogger("warn")
	if param == "" {
		values = []float64{math.NaN()}
	}
	var results []simResult
	for _, v := range values {
		oo := o
		if param != "" {
			if err := applySweep(&oo, param, v); err != nil {
				return err
			}
		}
		prof, err := simulate.LoadProfile(ctx, cfg, oo.delayScale, log)
		if err != nil {
			return err
		}
		r, err := simulateOnce(c, cfg, prof.Network, oo, fracs, classes, size)
		prof.Close()
		if err != nil {
			return err
		}
		if param != "" {
			r.Param, r.Value = param, v
		}
		results = append(results, r)
	}
	if o.plot != "" {
		if err := plotSweep(o.plot, param, results); err != nil {
			return err
		}
	}
	if o.asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if param == "" {
			return enc.Encode(results[0])
		}
		return enc.Encode(results)
	}
	for _, r := range results {
		if r.Param != "" {
			fmt.Fprintf(w, "=== %s = %g\n", r.Param, r.Value)
		}
		n := r.Network
		fmt.Fprintf(w, "network: %d nodes (%d exits), %d hops, %d users per node sending %g messages a day, λ_P %g/s, drop %g/s, loop %g/s, %s simulated\n",
			n.Nodes, n.Exits, n.Hops, n.UsersPerNode, n.RatePerDay, n.SendRate, n.DropRate, n.LoopRate, time.Duration(n.DurationS*float64(time.Second)))
		simulate.WriteText(w, r.Costs, r.Adversaries)
		fmt.Fprintln(w)
	}
	return nil
}

func simulateOnce(c *cobra.Command, cfg *config.Config, net simulate.Network, o simOptions, fracs []float64, classes []int, size func(*rand.Rand) int) (simResult, error) {
	changed := func(name string) bool { return c.Flags().Changed(name) }
	net.Nodes = o.nodes
	net.Exits = o.exits
	if net.Exits == 0 {
		net.Exits = o.nodes
		if !cfg.Mix.Exit {
			net.Exits = max(2, o.nodes/2)
		}
	}
	if o.hops > 0 {
		net.Hops = o.hops
	}
	if changed("send-rate") || o.sendRate > 0 {
		net.SendRate = o.sendRate
	}
	if changed("drop-rate") || o.dropRate > 0 {
		net.DropRate = o.dropRate
	}
	if changed("loop-rate") || o.loopRate > 0 {
		net.LoopRate = o.loopRate
	}
	if o.sizeClasses != "" {
		net.SizeClasses = classes
	}
	if o.pathPerFragment {
		net.SharedPath = false
	}
	warm := o.warmup
	if warm == 0 {
		warm = o.duration / 5
	}
	work := simulate.Workload{
		UsersPerNode: o.users, Rate: o.rate / 86400, Size: size,
		Duration: o.duration.Seconds(), Warmup: warm.Seconds(), Seed: o.seed,
	}
	tr, counts, err := simulate.Run(net, work)
	if err != nil {
		return simResult{}, err
	}
	model := simulate.EstimateModel(tr)
	r := simResult{
		Network: simNetwork{Nodes: net.Nodes, Exits: net.Exits, Hops: net.Hops, UsersPerNode: o.users, RatePerDay: o.rate,
			SendRate: net.SendRate, DropRate: net.DropRate, LoopRate: net.LoopRate, DelayScale: o.delayScale, DurationS: work.Duration},
		Costs: simulate.CostsOf(counts, work.Duration),
	}
	pick := rand.New(rand.NewPCG(o.seed, 3))
	for _, f := range fracs {
		var comp []bool
		name := "global passive observer"
		if f > 0 {
			comp = make([]bool, net.Nodes)
			k := int(math.Round(f * float64(net.Nodes)))
			for _, i := range pick.Perm(net.Nodes)[:k] {
				comp[i] = true
			}
			name = fmt.Sprintf("global passive observer + %d of %d nodes compromised", k, net.Nodes)
		}
		rs := simulate.Analyze(tr, model, comp)
		r.Adversaries = append(r.Adversaries, simulate.Summarize(name, f, tr.Users, rs))
		if o.perMessage {
			r.Messages = append(r.Messages, rs)
		}
	}
	return r, nil
}

func parseSweep(s string) (string, []float64, error) {
	if s == "" {
		return "", nil, nil
	}
	name, vals, ok := strings.Cut(s, "=")
	if !ok {
		return "", nil, fmt.Errorf("--sweep %q: want PARAM=V1,V2,...", s)
	}
	switch name {
	case "send_rate", "drop_rate", "loop_rate", "delay_scale", "users", "nodes":
	default:
		return "", nil, fmt.Errorf("--sweep: unknown parameter %q (send_rate, drop_rate, loop_rate, delay_scale, users, nodes)", name)
	}
	v, err := parseFloats(vals)
	if err != nil || len(v) == 0 {
		return "", nil, fmt.Errorf("--sweep %q: want PARAM=V1,V2,...", s)
	}
	return name, v, nil
}

func applySweep(o *simOptions, param string, v float64) error {
	switch param {
	case "send_rate":
		o.sendRate = v
	case "drop_rate":
		o.dropRate = v
	case "loop_rate":
		o.loopRate = v
	case "delay_scale":
		o.delayScale = v
	case "users":
		o.users = int(v)
	case "nodes":
		o.nodes = int(v)
	}
	if v < 0 || ((param == "users" || param == "nodes") && v != math.Trunc(v)) {
		return fmt.Errorf("--sweep %s: %v is not a valid value", param, v)
	}
	return nil
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	fs, err := parseFloats(s)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(fs))
	for i, f := range fs {
		if f <= 0 || f != math.Trunc(f) {
			return nil, fmt.Errorf("%v is not a size in bytes", f)
		}
		if i > 0 && int(f) <= out[i-1] {
			return nil, fmt.Errorf("sizes must be ascending")
		}
		out[i] = int(f)
	}
	return out, nil
}

// plotSweep draws the mean entropy (bits) against the swept parameter, one
// line per adversary, with gonum/plot.
func plotSweep(path, param string, rs []simResult) error {
	p := plot.New()
	p.Title.Text = "sender anonymity"
	p.X.Label.Text = param
	p.Y.Label.Text = "mean entropy (bits)"
	var lines []any
	for i := range rs[0].Adversaries {
		pts := make(plotter.XYs, len(rs))
		for j, r := range rs {
			pts[j].X, pts[j].Y = r.Value, r.Adversaries[i].EntropyMean
		}
		lines = append(lines, rs[0].Adversaries[i].Scenario, pts)
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	p.Legend.Top = false
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".svg", ".png":
		return p.Save(7*vg.Inch, 4*vg.Inch, path)
	default:
		return fmt.Errorf("--plot %s: the file must end in .svg or .png", path)
	}
}
