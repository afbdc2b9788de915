// Command mixmta is the mixmta daemon and its operator commands:
//
//	mixmta serve -c FILE          run the pipeline
//	mixmta check-config -c FILE   validate a pipeline file and its plugins
//	mixmta queue ls|stats|flush|delete ID
//	mixmta plugins                list the plugins in plugin_dir
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/daemon"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/core/internal/queue"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mixmta:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:           "mixmta",
		Short:         "mixmta: a plugin-based privacy MTA (mixnet remailer, Tor relay, onion mail gateway)",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.PersistentFlags().StringVarP(&cfgPath, "config", "c", "mixmta.yaml", "pipeline file (YAML)")
	load := func() (*config.Config, error) { return config.Load(cfgPath) }
	cmd.AddCommand(serveCmd(load), checkCmd(load), queueCmd(load), pluginsCmd(load), mixnetCmd())
	cmd.AddCommand(nodesCommands(load)...)
	cmd.AddCommand(onionCmd(load))
	return cmd
}

func newLogger(level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "mixmta",
		Level:      hclog.LevelFromString(level),
		Output:     os.Stderr,
		TimeFormat: "2006-01-02T15:04:05.000Z07:00",
	})
}

func serveCmd(load func() (*config.Config, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "run the SMTP pipeline until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log.Level)
			if addr := os.Getenv("MIXMTA_PPROF"); addr != "" {
				startPprof(addr, log)
			}
			ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer cancel()
			d, err := daemon.Start(ctx, cfg, log)
			if err != nil {
				return err
			}
			log.Info("mixmta started", "version", version, "config", cfg.Path, "stages", len(cfg.Pipeline))
			<-ctx.Done()
			log.Info("shutting down")
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer scancel()
			d.Stop(sctx)
			log.Info("stopped")
			return nil
		},
	}
}

func checkCmd(load func() (*config.Config, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "check-config",
		Short: "validate the pipeline file, start each plugin and check its config block",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			log := newLogger("warn")
			started, _, err := daemon.StartStages(context.Background(), cfg, log)
			if err != nil {
				return err
			}
			for _, s := range started {
				s.Close()
			}
			if err := daemon.CheckMix(context.Background(), cfg, log); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: OK (%d listeners, %d stages)\n", cfg.Path, len(cfg.Listeners), len(cfg.Pipeline))
			return nil
		},
	}
}

// withQueue runs fn on the running daemon (admin socket) or, when no daemon
// runs, on the queue opened directly.
func withQueue(load func() (*config.Config, error), remote func(*config.Config) error, local func(*config.Config, *queue.Queue) error) error {
	cfg, err := load()
	if err != nil {
		return err
	}
	err = remote(cfg)
	if !errors.Is(err, daemon.ErrNotRunning) {
		return err
	}
	q, err := queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{})
	if err != nil {
		return fmt.Errorf("%w (is a daemon running without its admin socket?)", err)
	}
	defer q.Close()
	return local(cfg, q)
}

func queueCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "queue", Short: "inspect and manage the queue"}
	var addresses, asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "list queue items (addresses only with --addresses)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var items []daemon.ItemView
			q := ""
			if addresses {
				q = "?addresses=1"
			}
			err := withQueue(load,
				func(cfg *config.Config) error { return daemon.AdminCall(cfg, "GET", "/queue"+q, &items) },
				func(cfg *config.Config, qu *queue.Queue) (err error) {
					items, err = daemon.ListItems(cfg, qu, addresses)
					return err
				})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(c.OutOrStdout()).Encode(items)
			}
			w := tabwriter.NewWriter(c.OutOrStdout(), 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tKIND\tSTAGE\tSTATE\tSEND_AFTER\tATTEMPTS\tSIZE\tRCPTS")
			for _, it := range items {
				state, after := "running", "-"
				if it.Waiting {
					state, after = "waiting", it.SendAfter.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d", it.ID, it.Kind, it.Stage, state, after, it.Attempts, it.Size, it.Recipients)
				if addresses {
					fmt.Fprintf(w, "\t<%s> -> %s", it.MailFrom, strings.Join(it.RcptTo, ", "))
				}
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%d items\n", len(items))
			return w.Flush()
		},
	}
	ls.Flags().BoolVar(&addresses, "addresses", false, "show envelope addresses (sensitive)")
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	stats := &cobra.Command{
		Use:   "stats",
		Short: "print counters and queue sizes",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var sv daemon.StatsView
			err := withQueue(load,
				func(cfg *config.Config) error { return daemon.AdminCall(cfg, "GET", "/stats", &sv) },
				func(cfg *config.Config, q *queue.Queue) error {
					items, err := daemon.ListItems(cfg, q, false)
					sv.Queued = int64(len(items))
					for _, it := range items {
						if it.Waiting && it.SendAfter.After(time.Now()) {
							sv.Delayed++
						}
					}
					sv.DiskLSM, sv.DiskVlog = q.DiskUsage()
					return err
				})
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), sv.Line())
			return nil
		},
	}
	flush := &cobra.Command{
		Use:   "flush",
		Short: "make every waiting item due now (it still leaves through the pool)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var r map[string]int
			err := withQueue(load,
				func(cfg *config.Config) error { return daemon.AdminCall(cfg, "POST", "/flush", &r) },
				func(cfg *config.Config, q *queue.Queue) error {
					n := 0
					var due []*queue.Item
					if err := q.Items(func(it *queue.Item) error {
						if it.Waiting {
							due = append(due, it)
						}
						return nil
					}); err != nil {
						return err
					}
					for _, it := range due {
						it.SendAfter = time.Now()
						if err := q.Update(it); err != nil {
							return err
						}
						n++
					}
					r = map[string]int{"flushed": n}
					return nil
				})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%d items flushed\n", r["flushed"])
			return nil
		},
	}
	del := &cobra.Command{
		Use:   "delete ID...",
		Short: "delete queue items (they are never delivered)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			for _, a := range args {
				id, err := queue.ParseID(a)
				if err != nil {
					return err
				}
				var r map[string]string
				err = withQueue(load,
					func(cfg *config.Config) error { return daemon.AdminCall(cfg, "POST", "/delete?id="+id.String(), &r) },
					func(_ *config.Config, q *queue.Queue) error {
						it, err := q.Get(id)
						if err != nil {
							return err
						}
						return q.Delete(it)
					})
				if err != nil {
					return fmt.Errorf("%s: %w", a, err)
				}
				fmt.Fprintf(c.OutOrStdout(), "deleted %s\n", id)
			}
			return nil
		},
	}
	cmd.AddCommand(ls, stats, flush, del)
	return cmd
}

func pluginsCmd(load func() (*config.Config, error)) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "plugins",
		Short: "list the plugins in plugin_dir with their kinds and config keys",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" {
				cfg, err := load()
				if err != nil {
					return err
				}
				dir = cfg.PluginDir
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(c.OutOrStdout(), 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "PLUGIN\tVERSION\tKINDS\tCONFIG KEYS\tDESCRIPTION")
			for _, e := range entries {
				path, err := pluginhost.Resolve(dir, e.Name())
				if err != nil || e.Name() == "mixmta" {
					continue
				}
				info, err := pluginhost.Probe(path, "", hclog.NewNullLogger())
				if err != nil {
					continue // not a mixmta plugin
				}
				var keys []string
				for k := range info.Schema.Properties {
					keys = append(keys, k)
				}
				kinds := make([]string, len(info.Kinds))
				for i, k := range info.Kinds {
					kinds[i] = string(k)
				}
				slices.Sort(keys)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", info.Name, info.Version, strings.Join(kinds, ","), strings.Join(keys, ","), info.Doc)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "plugin directory (default: plugin_dir of the config)")
	return cmd
}

// startPprof serves net/http/pprof on a loopback address for profiling
// (MIXMTA_PPROF=127.0.0.1:6060). Anything but loopback is refused: the
// profiles hold message bytes.
func startPprof(addr string, log hclog.Logger) {
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || !ip.IsLoopback() {
		log.Error("MIXMTA_PPROF must be a loopback address; profiling disabled", "address", addr)
		return
	}
	go func() {
		if err := http.ListenAndServe(addr, nil); err != nil {
			log.Error("pprof", "error", err)
		}
	}()
}
