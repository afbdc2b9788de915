package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/directory"
)

// nodesConsensusCmd is `mixmta nodes consensus`: the consensus this node
// uses (DATA_DIR/consensus.json), verified against the configured
// authorities as the daemon does.
func nodesConsensusCmd(load func() (*config.Config, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "consensus",
		Short: "show the directory consensus this node uses: epoch, validity, signers, parameters, nodes and capabilities",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			if cfg.Mix == nil || cfg.Mix.Directory == nil {
				return fmt.Errorf("%s: no mix.directory: this node uses the nodes file (mixmta nodes verify)", cfg.Path)
			}
			path := filepath.Join(cfg.DataDir, "consensus.json")
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("no consensus yet (%w); the node fetches one from 7/8 of each epoch", err)
			}
			var auths []directory.Authority
			for _, a := range cfg.Mix.Directory.Authorities {
				pub, err := directory.ParseAuthorityKey(a.Identity)
				if err != nil {
					return fmt.Errorf("mix.directory.authorities %s: %w", a.Name, err)
				}
				auths = append(auths, directory.Authority{Name: a.Name, Identity: pub, Address: a.Address})
			}
			v, err := directory.VerifyConsensus(data, auths, 0, time.Now())
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			out := c.OutOrStdout()
			p := v.Params
			format := p.SphinxFormat
			if format == "" {
				format = "default"
			}
			fmt.Fprintf(out, "consensus  epoch %d, valid %s to %s\n", v.Epoch, v.ValidAfter.UTC().Format(time.RFC3339), v.ValidUntil.UTC().Format(time.RFC3339))
			fmt.Fprintf(out, "signed by  %s (%d of %d authorities, %d needed)\n", strings.Join(v.Signers, ", "), len(v.Signers), len(auths), directory.Majority(len(auths)))
			fmt.Fprintf(out, "network    packet_size %d, epoch %ds, sphinx format %s, send_rate %g/s, drop_rate %g/s, loop_rate %g/s\n",
				p.PacketSize, p.EpochSeconds, format, p.SendRate, p.DropRate, p.LoopRate)
			fmt.Fprintf(out, "nodes      %d (%d with a key valid now or later)\n\n", len(v.Nodes), v.Directory.Len())
			w := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tID\tCAPABILITIES\tMIX ADDRESS\tONION ADDRESS\tPUBLISHED")
			for _, n := range v.Directory.All() {
				onion := n.OnionAddress
				if onion == "" {
					onion = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.ID.Short(), strings.Join(n.Capabilities, ","), n.MixAddress, onion, n.Published.UTC().Format(time.RFC3339))
			}
			return w.Flush()
		},
	}
}
