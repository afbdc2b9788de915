package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// authorityCmd is `mixmta authority key`: the directory authority key of
// this node, created when missing, for the other nodes'
// mix.directory.authorities.
func authorityCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "authority", Short: "this node's directory authority"}
	var file string
	key := &cobra.Command{
		Use:   "key",
		Short: "create the authority key (mix.directory.authority_key) if missing and print its public half, base64",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if file != "" {
				return printAuthorityKey(c, file)
			}
			cfg, err := load()
			if err != nil {
				return err
			}
			if cfg.Mix == nil || cfg.Mix.Directory == nil || cfg.Mix.Directory.Listen == "" {
				return fmt.Errorf("%s: this node is no authority (set mix.directory.listen)", cfg.Path)
			}
			return printAuthorityKey(c, cfg.Mix.Directory.AuthorityKey)
		},
	}
	key.Flags().StringVar(&file, "key", "", "the key file (instead of the config's mix.directory.authority_key), e.g. before the authorities are listed")
	cmd.AddCommand(key)
	return cmd
}

func printAuthorityKey(c *cobra.Command, file string) error {
	key, _, err := nodes.LoadOrCreateKey(file)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.OutOrStdout(), base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)))
	return nil
}
