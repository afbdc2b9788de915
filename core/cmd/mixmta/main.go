// Command mixmta is the mixmta daemon and its operator commands:
//
//	mixmta serve -c FILE          run the pipeline
//	mixmta check-config -c FILE   validate a pipeline file and its plugins
//	mixmta queue ls|stats|flush|show|hold|release|requeue|delete ID|ALL
//	mixmta config show [-n]       the effective config with defaults
//	mixmta users add NAME         set a password in a listener's users file
//	mixmta version
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
	"runtime"
	"runtime/debug"
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
	daemon.Version = version
	cmd.AddCommand(serveCmd(load), checkCmd(load), queueCmd(load), pluginsCmd(load), mixnetCmd(), versionCmd(), usersCmd(load), configCmd(load), simulateCmd(load))
	cmd.AddCommand(nodesCommands(load)...)
	cmd.AddCommand(onionCmd(load))
	cmd.AddCommand(authorityCmd(load))
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
			err = daemon.CheckMix(context.Background(), cfg, started, log)
			for _, s := range started {
				s.Close()
			}
			if err != nil {
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
			fmt.Fprintln(w, "ID\tKIND\tSTAGE\tSTATE\tSEND_AFTER\tATTEMPTS\tSIZE\tRCPTS\tREASON")
			for _, it := range items {
				state, after := itemState(it)
				reason := it.Reason
				if reason == "" {
					reason = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s", it.ID, it.Kind, it.Stage, state, after, it.Attempts, it.Size, it.Recipients, reason)
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
		Short: "release every waiting item now, past the pool and its delay (this gives up their mixing)",
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
		Use:   "delete ID...|ALL",
		Short: "delete queue items (they are never delivered); ALL deletes every item",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] == "ALL" {
				var r map[string]int
				err := withQueue(load,
					func(cfg *config.Config) error { return daemon.AdminCall(cfg, "POST", "/delete-all", &r) },
					func(_ *config.Config, q *queue.Queue) error {
						var all []*queue.Item
						if err := q.Items(func(it *queue.Item) error { all = append(all, it); return nil }); err != nil {
							return err
						}
						for _, it := range all {
							if err := q.Delete(it); err != nil {
								return err
							}
						}
						r = map[string]int{"deleted": len(all)}
						return nil
					})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "%d items deleted\n", r["deleted"])
				return nil
			}
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
	cmd.AddCommand(ls, stats, flush, del, showCmd(load))
	for _, op := range []struct{ name, short, done string }{
		{"hold", "hold items: they stay queued and are not processed until released", "held"},
		{"release", "release held or quarantined items: they resume where they were", "released"},
		{"requeue", "release items and restart their retry schedule (like postsuper -r)", "requeued"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   op.name + " ID...",
			Short: op.short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				for _, a := range args {
					id, err := queue.ParseID(a)
					if err != nil {
						return err
					}
					var r map[string]string
					err = withQueue(load,
						func(cfg *config.Config) error {
							return daemon.AdminCall(cfg, "POST", "/"+op.name+"?id="+id.String(), &r)
						},
						func(_ *config.Config, q *queue.Queue) error { return offlineHold(q, id, op.name) })
					if err != nil {
						return fmt.Errorf("%s: %w", a, err)
					}
					fmt.Fprintf(c.OutOrStdout(), "%s %s\n", op.done, id)
				}
				return nil
			},
		})
	}
	return cmd
}

// itemState is the STATE and SEND_AFTER columns of `queue ls`.
func itemState(it daemon.ItemView) (state, after string) {
	switch {
	case it.Held:
		return "held", "-"
	case !it.Waiting:
		return "running", "-"
	case it.Reason != "":
		state = "deferred"
	case it.SendAfter.After(time.Now()):
		state = "delayed"
	default:
		state = "pooled"
	}
	return state, it.SendAfter.UTC().Format(time.RFC3339)
}

// offlineHold is hold, release or requeue on a stopped daemon's queue; the
// next start picks the item up as stored.
func offlineHold(q *queue.Queue, id queue.ID, op string) error {
	it, err := q.Get(id)
	if err != nil {
		return err
	}
	switch op {
	case "hold":
		it.Held, it.Reason = true, "held by the operator"
	case "release", "requeue":
		if op == "release" && !it.Held {
			return errors.New("item is not held")
		}
		if op == "requeue" {
			if it.Attempts > 0 && it.Waiting {
				it.SendAfter = time.Now()
			}
			it.Attempts = 0
		}
		it.Held, it.Failures, it.Crashes, it.Reason = false, 0, 0, ""
	}
	return q.Update(it)
}

func showCmd(load func() (*config.Config, error)) *cobra.Command {
	var addresses, asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "print one item and its header (address fields only with --addresses)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			id, err := queue.ParseID(args[0])
			if err != nil {
				return err
			}
			var d daemon.ItemDetail
			q := "?id=" + id.String()
			if addresses {
				q += "&addresses=1"
			}
			err = withQueue(load,
				func(cfg *config.Config) error { return daemon.AdminCall(cfg, "GET", "/show"+q, &d) },
				func(cfg *config.Config, qu *queue.Queue) (err error) {
					d, err = daemon.ShowItem(cfg, qu, id, addresses, nil)
					return err
				})
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			out := c.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(d)
			}
			state, after := itemState(d.ItemView)
			fmt.Fprintf(out, "id: %s\nmessage: %s\nkind: %s\nstage: %s\nstate: %s\nsend_after: %s\nattempts: %d\nreason: %s\nreceived: %s\nsize: %d (body %d)\nrecipients: %d\n",
				d.ID, d.Message, d.Kind, d.Stage, state, after, d.Attempts, d.Reason, d.Received.UTC().Format(time.RFC3339), d.Size, d.BodyBytes, d.Recipients)
			if addresses {
				fmt.Fprintf(out, "mail_from: <%s>\nrcpt_to: %s\n", d.MailFrom, strings.Join(d.RcptTo, ", "))
			} else if len(d.HeaderHidden) > 0 {
				fmt.Fprintf(out, "hidden header fields (--addresses shows them): %s\n", strings.Join(d.HeaderHidden, ", "))
			}
			fmt.Fprintf(out, "\n%s", d.Header)
			return nil
		},
	}
	cmd.Flags().BoolVar(&addresses, "addresses", false, "show envelope addresses and address header fields (sensitive)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
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
// profiles hold message bytes. The block and mutex profiles are on too
// (every blocking event and contention sampled): they show where the wall
// time goes that a CPU profile does not (fsync waits, locks, channel
// hand-offs), at a cost that only a profiling run should pay.
func startPprof(addr string, log hclog.Logger) {
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || !ip.IsLoopback() {
		log.Error("MIXMTA_PPROF must be a loopback address; profiling disabled", "address", addr)
		return
	}
	runtime.SetBlockProfileRate(1)
	runtime.SetMutexProfileFraction(1)
	go func() {
		if err := http.ListenAndServe(addr, nil); err != nil {
			log.Error("pprof", "error", err)
		}
	}()
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version, the Go version and the VCS revision it was built from",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			rev := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						rev = s.Value
					}
				}
			}
			fmt.Fprintf(c.OutOrStdout(), "mixmta %s (%s %s/%s, revision %s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH, rev)
			return nil
		},
	}
}

func configCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "inspect the pipeline file"}
	var onlySet bool
	show := &cobra.Command{
		Use:   "show",
		Short: "print the effective config with every default filled in (-n: only the keys written in the file)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			out, err := cfg.Show(onlySet)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "# %s\n%s", cfg.Path, out)
			return nil
		},
	}
	show.Flags().BoolVarP(&onlySet, "changed", "n", false, "only the keys written in the file (like postconf -n)")
	cmd.AddCommand(show)
	return cmd
}
