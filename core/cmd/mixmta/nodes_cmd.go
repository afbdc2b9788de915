package main

// Mixnet key and nodes-file commands:
//
//	mixmta keygen                  create the identity key (never replaced) and the mix keys
//	mixmta node export             print this node's signed descriptor (JSON)
//	mixmta nodes add FILE...       verify descriptors and add them to the nodes file
//	mixmta nodes verify            verify every descriptor of the nodes file

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// nodeSettings are what the key and nodes commands need to know about this
// node. They come from defaults, then the pipeline file when -c is given
// (fromConfig), then the flags given on the command line.
type nodeSettings struct {
	// KeyDir holds identity.key and mix-<epoch>.key (0700). Default
	// DATA_DIR/keys.
	KeyDir string
	// NodesFile is the nodes file (nodes.json).
	NodesFile string
	// Name, MixAddress (host:port), OnionAddress (optional NAME.onion:PORT)
	// and Exit go into this node's descriptor.
	Name         string
	MixAddress   string
	OnionAddress string
	Exit         bool
	// Capabilities besides "exit" (mix.capabilities), e.g. "mail2news".
	Capabilities []string
	// EpochLength (whole seconds) and Grace (whole seconds, below
	// EpochLength) must be those of the running node.
	EpochLength time.Duration
	Grace       time.Duration
	// KeysAhead: epochs after the current one with keys (mix.keys_ahead).
	KeysAhead int
	// Format is the Sphinx format of the mix keys (mix.sphinx_format).
	Format mixkey.Kind
}

func defaultNodeSettings() nodeSettings {
	return nodeSettings{
		KeyDir:      filepath.Join(config.DefaultDataDir, "keys"),
		NodesFile:   "nodes.json",
		EpochLength: time.Hour,
		Grace:       10 * time.Minute,
		KeysAhead:   1,
	}
}

// fromConfig takes the settings the pipeline file has: the key directory
// DATA_DIR/keys, and the mix: section's node settings when it exists.
func (s *nodeSettings) fromConfig(cfg *config.Config) {
	s.KeyDir = filepath.Join(cfg.DataDir, "keys")
	if m := cfg.Mix; m != nil {
		s.KeyDir, s.NodesFile, s.Name, s.MixAddress, s.Exit = m.KeysDir, m.NodesFile, m.Name, m.Address, m.Exit
		s.Capabilities = m.Capabilities
		s.EpochLength, s.Grace, s.KeysAhead = m.Epoch.D(), m.Grace.D(), m.KeysAhead
		s.Format, _ = mixkey.ParseKind(m.SphinxFormat) // validated with the config
	}
}

// nodeFlag names the flags of nodeSettings.
type nodeFlag int

const (
	flagKeys nodeFlag = iota
	flagNodes
	flagDescriptor // name, address, onion, exit
	flagEpochs     // epoch-length, grace
)

// bindNodeFlags adds the flags of the given groups to c, writing into f.
func bindNodeFlags(c *cobra.Command, f *nodeSettings, groups ...nodeFlag) {
	d := defaultNodeSettings()
	fs := c.Flags()
	for _, g := range groups {
		switch g {
		case flagKeys:
			fs.StringVar(&f.KeyDir, "keys", d.KeyDir, "key directory (default: DATA_DIR/keys of the config given with -c)")
		case flagNodes:
			fs.StringVar(&f.NodesFile, "nodes", d.NodesFile, "nodes file")
		case flagDescriptor:
			fs.StringVar(&f.Name, "name", "", "node name (A-Z a-z 0-9 . _ -, up to 64)")
			fs.StringVar(&f.MixAddress, "address", "", "mix listener address, HOST:PORT")
			fs.StringVar(&f.OnionAddress, "onion", "", "optional v3 onion address of the mix listener, NAME.onion:PORT")
			fs.BoolVar(&f.Exit, "exit", false, "this node is an exit (capability \"exit\")")
		case flagEpochs:
			fs.DurationVar(&f.EpochLength, "epoch-length", d.EpochLength, "epoch length (whole seconds; must match the running node)")
			fs.DurationVar(&f.Grace, "grace", d.Grace, "grace period of a mix key after its epoch (must match the running node)")
			fs.IntVar(&f.KeysAhead, "keys-ahead", d.KeysAhead, "epochs after the current one to create and publish keys for")
			fs.Var(&f.Format, "sphinx-format", "Sphinx packet format of the mix keys: x25519 or xwing (must match the running node)")
		}
	}
}

// resolveNodeSettings merges defaults, the config (only when -c was given)
// and the flags that were set.
func resolveNodeSettings(c *cobra.Command, load func() (*config.Config, error), f *nodeSettings) (nodeSettings, error) {
	s := defaultNodeSettings()
	if cf := c.Flag("config"); cf != nil && cf.Changed {
		cfg, err := load()
		if err != nil {
			return s, err
		}
		s.fromConfig(cfg)
		if s.OnionAddress, err = mixOnion(cfg); err != nil {
			return s, err
		}
	}
	set := func(name string, apply func()) {
		if c.Flags().Changed(name) {
			apply()
		}
	}
	set("keys", func() { s.KeyDir = f.KeyDir })
	set("nodes", func() { s.NodesFile = f.NodesFile })
	set("name", func() { s.Name = f.Name })
	set("address", func() { s.MixAddress = f.MixAddress })
	set("onion", func() { s.OnionAddress = f.OnionAddress })
	set("exit", func() { s.Exit = f.Exit })
	set("epoch-length", func() { s.EpochLength = f.EpochLength })
	set("grace", func() { s.Grace = f.Grace })
	set("keys-ahead", func() { s.KeysAhead = f.KeysAhead })
	set("sphinx-format", func() { s.Format = f.Format })
	return s, nil
}

// keyStore opens the key directory with the node's epoch settings and
// brings its mix keys up to date at now (creating keys ahead, deleting
// expired ones).
func (s nodeSettings) keyStore(now time.Time) (*nodes.KeyStore, nodes.Changes, error) {
	ks, err := nodes.OpenFormat(s.KeyDir, s.EpochLength, s.Grace, s.Format)
	if err != nil {
		return nil, nodes.Changes{}, err
	}
	ks.SetAhead(s.KeysAhead)
	ch, err := ks.Ensure(now)
	return ks, ch, err
}

// export signs this node's descriptor with its published keys.
func (s nodeSettings) export(id *nodes.Identity, ks *nodes.KeyStore, now time.Time) (*nodes.Descriptor, error) {
	info := nodes.NodeInfo{Name: s.Name, MixAddress: s.MixAddress, OnionAddress: s.OnionAddress}
	if s.Exit {
		info.Capabilities = []string{nodes.CapExit}
	}
	info.Capabilities = append(info.Capabilities, s.Capabilities...)
	return nodes.Export(id, ks.Published(now), info, now)
}

// nodesCommands are keygen, node (export) and nodes (add, verify).
func nodesCommands(load func() (*config.Config, error)) []*cobra.Command {
	return []*cobra.Command{keygenCmd(load), nodeCmd(load), nodesCmd(load)}
}

func keygenCmd(load func() (*config.Config, error)) *cobra.Command {
	var f nodeSettings
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "create this node's identity key (if missing; never replaced) and its mix keys for the current and next epoch",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := resolveNodeSettings(c, load, &f)
			if err != nil {
				return err
			}
			id, created, err := nodes.LoadOrCreateIdentity(s.KeyDir)
			if err != nil {
				return err
			}
			now := time.Now()
			ks, ch, err := s.keyStore(now)
			if err != nil {
				return err
			}
			state := "existing"
			if created {
				state = "created"
			}
			var es []uint64
			for _, k := range ks.Published(now) {
				es = append(es, k.Epoch)
			}
			epochs := epochRanges(es)
			w := c.OutOrStdout()
			fmt.Fprintf(w, "identity  %s %s\n", state, filepath.Join(s.KeyDir, nodes.IdentityFile))
			fmt.Fprintf(w, "node id   %s\n", id.ID())
			fmt.Fprintf(w, "mix keys  epochs %s (%d created, %d expired deleted)\n", epochs, len(ch.Created), len(ch.Deleted))
			return nil
		},
	}
	bindNodeFlags(cmd, &f, flagKeys, flagEpochs)
	return cmd
}

func nodeCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "this node's descriptor"}
	var f nodeSettings
	export := &cobra.Command{
		Use:   "export",
		Short: "print this node's signed descriptor (JSON) for other nodes' nodes files",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := resolveNodeSettings(c, load, &f)
			if err != nil {
				return err
			}
			if s.Name == "" || s.MixAddress == "" {
				return fmt.Errorf("node export: --name and --address are required")
			}
			id, err := nodes.LoadIdentity(s.KeyDir)
			if err != nil {
				return err
			}
			now := time.Now()
			ks, _, err := s.keyStore(now)
			if err != nil {
				return err
			}
			d, err := s.export(id, ks, now)
			if err != nil {
				return err
			}
			out, err := json.MarshalIndent(d, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.OutOrStdout(), "%s\n", out)
			return err
		},
	}
	bindNodeFlags(export, &f, flagKeys, flagDescriptor, flagEpochs)
	cmd.AddCommand(export)
	return cmd
}

func nodesCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "nodes", Short: "manage the nodes file (signed descriptors of the mixnet)"}
	var af, vf nodeSettings
	add := &cobra.Command{
		Use:   "add FILE...",
		Short: "verify descriptors (from node export, or nodes files; - is stdin) and add them to the nodes file, all or none",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			s, err := resolveNodeSettings(c, load, &af)
			if err != nil {
				return err
			}
			var descs []*nodes.Descriptor
			for _, a := range args {
				var data []byte
				if a == "-" {
					data, err = io.ReadAll(c.InOrStdin())
				} else {
					data, err = os.ReadFile(a)
				}
				if err != nil {
					return err
				}
				ds, err := nodes.ReadDescriptors(a, data)
				if err != nil {
					return err
				}
				for _, d := range ds {
					if err := nodes.Verify(d, time.Now()); err != nil {
						return fmt.Errorf("%s: %w", a, err)
					}
				}
				descs = append(descs, ds...)
			}
			res, err := nodes.AddNodes(s.NodesFile, descs, time.Now())
			if err != nil {
				return err
			}
			for _, r := range res {
				verb := "added"
				if r.Replaced {
					verb = "replaced"
				}
				fmt.Fprintf(c.OutOrStdout(), "%s %q (node %s) in %s\n", verb, r.Name, r.ID.Short(), s.NodesFile)
			}
			return nil
		},
	}
	bindNodeFlags(add, &af, flagNodes)
	verify := &cobra.Command{
		Use:   "verify",
		Short: "verify every descriptor of the nodes file and print a table; fails if any is rejected",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := resolveNodeSettings(c, load, &vf)
			if err != nil {
				return err
			}
			entries, err := nodes.CheckNodes(s.NodesFile, time.Now())
			if err != nil {
				return err
			}
			return printEntries(c.OutOrStdout(), s.NodesFile, entries)
		},
	}
	bindNodeFlags(verify, &vf, flagNodes)
	cmd.AddCommand(add, verify, nodesConsensusCmd(load))
	return cmd
}

// printEntries prints the verify table, then each error in full; the
// error counts the rejected entries.
func printEntries(out io.Writer, path string, entries []nodes.Entry) error {
	w := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "#\tLINE\tNAME\tID\tEXIT\tEPOCHS\tVALID UNTIL\tSTATUS")
	bad := 0
	for _, e := range entries {
		name, id, exit, epochs, until := "-", "-", "-", "-", "-"
		if e.Descriptor != nil {
			name = strconv.Quote(e.Descriptor.Name)
		}
		if n := e.Node; n != nil {
			id, exit = n.ID.Short(), "no"
			if n.Exit {
				exit = "yes"
			}
			var es []uint64
			var last time.Time
			for _, k := range n.Keys {
				es = append(es, k.Epoch)
				if k.NotAfter.After(last) {
					last = k.NotAfter
				}
			}
			epochs, until = epochRanges(es), last.UTC().Format(time.RFC3339)
		}
		if e.Err != nil {
			bad++
		}
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Index, e.Line, name, id, exit, epochs, until, nodes.Kind(e.Err))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, e := range entries {
		if e.Err != nil {
			fmt.Fprintln(out, e.Err)
		}
	}
	if bad > 0 {
		return fmt.Errorf("%s: %d of %d descriptors rejected", path, bad, len(entries))
	}
	fmt.Fprintf(out, "%s: %d descriptors OK\n", path, len(entries))
	return nil
}

// epochRanges formats ascending epochs compactly: "5-9,12".
func epochRanges(es []uint64) string {
	var parts []string
	for i := 0; i < len(es); {
		j := i
		for j+1 < len(es) && es[j+1] == es[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.FormatUint(es[i], 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", es[i], es[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
