package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/daemon"
)

// onionCmd is `mixmta onion address`: the onion addresses of the
// listeners in tor.onion_services, read from (or created in) their key
// files, so an operator can publish them (SRV records, the onionmx map, a
// node descriptor) before the first start.
func onionCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "onion", Short: "onion services of this node"}
	cmd.AddCommand(&cobra.Command{
		Use:   "address [LISTENER]",
		Short: "print the onion address (NAME.onion:PORT) of each published listener, or of one",
		Long: "Prints \"LISTENER ADDRESS.onion:PORT\" for every listener in tor.onion_services " +
			"(only the address when LISTENER is given). A missing key file is created (0600), " +
			"so the address is known before the first start and stays the same afterwards.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			if cfg.Tor == nil || len(cfg.Tor.OnionServices) == 0 {
				return errors.New("no tor.onion_services in the config")
			}
			found := false
			for _, o := range cfg.Tor.OnionServices {
				if len(args) == 1 && o.Listener != args[0] {
					continue
				}
				found = true
				k, err := daemon.OnionKey(o.KeyFile)
				if err != nil {
					return err
				}
				if len(args) == 1 {
					fmt.Fprintf(c.OutOrStdout(), "%s:%d\n", k.Address(), cfg.OnionPort(o))
				} else {
					fmt.Fprintf(c.OutOrStdout(), "%s %s:%d\n", o.Listener, k.Address(), cfg.OnionPort(o))
				}
			}
			if !found {
				return fmt.Errorf("no onion service for listener %q", args[0])
			}
			return nil
		},
	})
	return cmd
}

// mixOnion is the onion address (NAME.onion:PORT) of the mix listener
// when tor.onion_services publishes it, else "": the descriptor carries it.
func mixOnion(cfg *config.Config) (string, error) {
	if cfg.Tor == nil {
		return "", nil
	}
	for _, o := range cfg.Tor.OnionServices {
		if o.Listener == config.MixOnion {
			k, err := daemon.OnionKey(o.KeyFile)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%s:%d", k.Address(), cfg.OnionPort(o)), nil
		}
	}
	return "", nil
}
