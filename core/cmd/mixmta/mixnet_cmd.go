package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/daemon"
	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// mixnetCmd builds and runs a whole mixnet of several nodes on one
// machine, for trying mixmta out and for tests.
func mixnetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "mixnet", Short: "a local mixnet of several nodes on loopback (demo and tests)"}
	var o mixnetOptions
	init := &cobra.Command{
		Use:   "init",
		Short: "create N node configs from a profile, their keys, and a shared nodes file",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return mixnetInit(c.OutOrStdout(), o)
		},
	}
	run := &cobra.Command{
		Use:   "run",
		Short: "start every node of a mixnet made by init (init first if DIR has none) until SIGTERM/SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if cfgs, _ := filepath.Glob(filepath.Join(o.Dir, "node*", "mixmta.yaml")); len(cfgs) == 0 {
				if err := mixnetInit(c.OutOrStdout(), o); err != nil {
					return err
				}
			}
			return mixnetRun(c.OutOrStdout(), o.Dir)
		},
	}
	for _, sub := range []*cobra.Command{init, run} {
		f := sub.Flags()
		f.StringVar(&o.Dir, "dir", "./var/mixnet", "directory for the nodes' configs, data and the nodes file")
		f.StringVar(&o.Profile, "profile", "configs/local-mixnet.yaml", "profile every node's config is made from")
		f.IntVar(&o.Nodes, "nodes", 5, "number of nodes (at least hops + 1)")
		f.IntVar(&o.SMTPPort, "smtp-port", 2525, "SMTP port of node1; node i listens on smtp-port+i-1")
		f.IntVar(&o.MixPort, "mix-port", 7101, "mix port of node1; node i listens on mix-port+i-1")
		f.IntVar(&o.Authorities, "authorities", 0, "nodes 1..N are also directory authorities and every node takes the network from their consensus (no nodes file)")
		f.IntVar(&o.DirPort, "dir-port", 7301, "directory port of authority 1; authority i listens on dir-port+i-1")
	}
	cmd.AddCommand(init, run, mixnetStatsCmd())
	return cmd
}

// mixnetStatsCmd prints the running node's per-node loop statistics, like
// the Mixmaster/YAMN pinger's mlist. It reads the -c pipeline file (the
// root's persistent flag) to find the daemon's admin socket.
func mixnetStatsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "per-node reliability and latency from this node's loops (the running daemon of -c)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path, err := c.Flags().GetString("config")
			if err != nil {
				return err
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if cfg.Mix == nil {
				return fmt.Errorf("%s has no mix section", cfg.Path)
			}
			var st []mixnet.NodeLoopStats
			if err := daemon.AdminCall(cfg, "GET", "/mixnet/stats", &st); err != nil {
				if errors.Is(err, daemon.ErrNotRunning) {
					return fmt.Errorf("%w: loop statistics live in the running daemon's memory", err)
				}
				return err
			}
			writeLoopStats(c.OutOrStdout(), st)
			return nil
		},
	}
}

// writeLoopStats prints the table of `mixmta mixnet stats`, one node a
// line, sorted by name.
func writeLoopStats(out io.Writer, st []mixnet.NodeLoopStats) {
	fmt.Fprintln(out, "loops this node sent through each node, finished in the last 24h (at most 500 per node);")
	fmt.Fprintln(out, "a lost loop counts against every node of its path")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tRELIABILITY\tLAT_MEDIAN\tLAT_P95\tSENT\tRETURNED\tLOST\tPENDING\tHEALTH")
	for _, s := range st {
		rel, med, high := "-", "-", "-"
		if s.Reliability >= 0 {
			rel = fmt.Sprintf("%.1f%%", 100*s.Reliability)
		}
		if s.Returned > 0 {
			med, high = roundLatency(s.LatencyMedian), roundLatency(s.LatencyHigh)
		}
		health := "down"
		if s.Healthy {
			health = "up"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", s.Name, s.ID.Short(), rel, med, high,
			s.Returned+s.Lost+s.Pending, s.Returned, s.Lost, s.Pending, health)
	}
	tw.Flush()
}

func roundLatency(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}

type mixnetOptions struct {
	Dir, Profile             string
	Nodes, SMTPPort, MixPort int
	Authorities, DirPort     int
}

// mixnetInit writes DIR/nodeI/mixmta.yaml for every node (the profile with
// its addresses, names and data dir), creates each node's identity and mix
// keys, and collects their signed descriptors in DIR/nodes.json.
func mixnetInit(out io.Writer, o mixnetOptions) error {
	if o.Nodes < 2 {
		return fmt.Errorf("mixnet init: need at least 2 nodes")
	}
	profile, err := os.ReadFile(o.Profile)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return err
	}
	nodesFile := filepath.Join(o.Dir, "nodes.json")
	var descs []*nodes.Descriptor
	now := time.Now()
	// With a tor: section every connection goes through Tor, so the
	// authorities are onion services: each publishes its directory
	// listener, and the list names those onions.
	var prof struct {
		Tor *struct {
			OnionServices []map[string]any `yaml:"onion_services"`
		} `yaml:"tor"`
	}
	if err := yaml.Unmarshal(profile, &prof); err != nil {
		return fmt.Errorf("%s: %w", o.Profile, err)
	}
	onionAuths := prof.Tor != nil
	auths, err := mixnetAuthorities(o, onionAuths)
	if err != nil {
		return err
	}
	for i := 1; i <= o.Nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		dir := filepath.Join(o.Dir, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		patch := map[string]any{
			"data_dir":            filepath.Join(dir, "data"),
			"listeners.0.address": fmt.Sprintf("127.0.0.1:%d", o.SMTPPort+i-1),
			"mix.name":            name,
			"mix.address":         fmt.Sprintf("127.0.0.1:%d", o.MixPort+i-1),
			"mix.nodes_file":      nodesFile,
		}
		if len(auths) > 0 {
			d := map[string]any{"authorities": auths}
			if i <= len(auths) {
				d["listen"], d["authority_key"] = fmt.Sprintf("127.0.0.1:%d", o.DirPort+i-1), filepath.Join(dir, "authority.key")
				if onionAuths {
					patch["tor.onion_services"] = append(append([]map[string]any(nil), prof.Tor.OnionServices...),
						map[string]any{"listener": config.DirectoryOnion, "key_file": directoryOnionKey(dir)})
				}
			}
			patch["mix.nodes_file"], patch["mix.directory"] = "", d
			// The profile's keys_ahead serves a nodes file; with a
			// directory more than the margin is refused.
			patch["mix.keys_ahead"] = config.DirectoryKeysAhead
		}
		data, err := config.Patch(profile, patch)
		if err != nil {
			return fmt.Errorf("%s: %w", o.Profile, err)
		}
		cfgPath := filepath.Join(dir, "mixmta.yaml")
		if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
			return err
		}
		cfg, err := config.Parse(cfgPath, data)
		if err != nil {
			return err
		}
		m := cfg.Mix
		if m == nil {
			return fmt.Errorf("%s has no mix section", o.Profile)
		}
		s := defaultNodeSettings()
		s.fromConfig(cfg)
		if s.OnionAddress, err = mixOnion(cfg); err != nil {
			return err
		}
		id, _, err := nodes.LoadOrCreateIdentity(s.KeyDir)
		if err != nil {
			return err
		}
		ks, _, err := s.keyStore(now)
		if err != nil {
			return err
		}
		d, err := s.export(id, ks, now)
		if err != nil {
			return err
		}
		descs = append(descs, d)
		fmt.Fprintf(out, "%s: SMTP 127.0.0.1:%d, mix %s, node id %s, config %s\n", name, o.SMTPPort+i-1, m.Address, id.ID().Short(), cfgPath)
	}
	if len(auths) > 0 {
		where := fmt.Sprintf("127.0.0.1:%d...", o.DirPort)
		if onionAuths {
			where = "onion services " + auths[0]["address"].(string) + "..."
		}
		fmt.Fprintf(out, "no nodes file: nodes 1 to %d are directory authorities (%s), every node uploads its descriptor and takes the network from their consensus\n", len(auths), where)
		return nil
	}
	if _, err := nodes.AddNodes(nodesFile, descs, now); err != nil {
		return err
	}
	fmt.Fprintf(out, "nodes file %s with %d nodes\n", nodesFile, len(descs))
	return nil
}

// directoryOnionKey is the key of the onion service of an authority's
// directory listener, in its node directory.
func directoryOnionKey(nodeDir string) string { return filepath.Join(nodeDir, "directory.onion.key") }

// mixnetAuthorities creates the authority keys of nodes 1..o.Authorities
// (DIR/nodeI/authority.key) and returns mix.directory.authorities; with
// onion, their addresses are the onion services of their directory
// listeners (keys DIR/nodeI/directory.onion.key, created here).
func mixnetAuthorities(o mixnetOptions, onion bool) ([]map[string]any, error) {
	if o.Authorities > o.Nodes {
		return nil, fmt.Errorf("mixnet init: %d authorities among %d nodes", o.Authorities, o.Nodes)
	}
	var out []map[string]any
	for i := 1; i <= o.Authorities; i++ {
		key, _, err := nodes.LoadOrCreateKey(filepath.Join(o.Dir, fmt.Sprintf("node%d", i), "authority.key"))
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", o.DirPort+i-1)
		if onion {
			k, err := daemon.OnionKey(directoryOnionKey(filepath.Join(o.Dir, fmt.Sprintf("node%d", i))))
			if err != nil {
				return nil, err
			}
			addr = fmt.Sprintf("%s:%d", k.Address(), o.DirPort+i-1)
		}
		out = append(out, map[string]any{
			"name":     fmt.Sprintf("node%d", i),
			"identity": base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)),
			"address":  addr,
		})
	}
	return out, nil
}

// mixnetRun starts `mixmta serve` for every node config in dir, prefixes
// their logs with the node name, and stops them all on SIGTERM/SIGINT or
// when one exits.
func mixnetRun(out io.Writer, dir string) error {
	cfgs, _ := filepath.Glob(filepath.Join(dir, "node*", "mixmta.yaml"))
	if len(cfgs) == 0 {
		return fmt.Errorf("no node configs in %s (run mixmta mixnet init)", dir)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var procs []*exec.Cmd
	exited := make(chan string, len(cfgs))
	for _, cfg := range cfgs {
		name := filepath.Base(filepath.Dir(cfg))
		cmd := exec.Command(self, "serve", "-c", cfg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				mu.Lock()
				fmt.Fprintf(out, "[%s] %s\n", name, sc.Text())
				mu.Unlock()
			}
		}()
		go func() {
			err := cmd.Wait()
			pw.CloseWithError(err)
			exited <- fmt.Sprintf("%s exited: %v", name, err)
		}()
	}
	fmt.Fprintf(out, "mixnet: %d nodes running; SMTP on node1 (see %s/node1/mixmta.yaml); Ctrl-C stops\n", len(procs), dir)
	var why string
	select {
	case <-ctx.Done():
		why = "signal"
	case why = <-exited:
	}
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(40 * time.Second)
	for range len(procs) - boolInt(why != "signal") {
		select {
		case <-exited:
		case <-deadline:
			for _, p := range procs {
				_ = p.Process.Kill()
			}
		}
	}
	wg.Wait()
	if why != "signal" {
		return fmt.Errorf("mixnet stopped: %s", why)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
