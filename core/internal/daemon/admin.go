package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
)

// The admin socket (DATA_DIR/admin.sock, mode 0600) lets `mixmta queue`
// reach a running daemon, which holds the only handle on the queue.

// ItemView is one queue item as `mixmta queue ls` shows it. Addresses are
// filled only on request.
type ItemView struct {
	ID string `json:"id"`
	// Kind: message, packet-in, packet-out or fragment.
	Kind       string    `json:"kind"`
	Message    string    `json:"message"`
	Stage      string    `json:"stage"`
	Waiting    bool      `json:"waiting"`
	SendAfter  time.Time `json:"send_after,omitzero"`
	Attempts   int       `json:"attempts"`
	Size       int64     `json:"size"`
	Recipients int       `json:"recipients"`
	Received   time.Time `json:"received"`
	MailFrom   string    `json:"mail_from,omitempty"`
	RcptTo     []string  `json:"rcpt_to,omitempty"`
}

// StatsView is `mixmta queue stats`.
type StatsView struct {
	Received, Sent, Deferred, Failed, Rejected, Dropped int64
	Queued, Delayed                                     int64
	PluginsHealthy, Plugins                             int
	DiskLSM, DiskVlog                                   int64
}

func socketPath(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "admin.sock") }

func view(cfg *config.Config, it *queue.Item, addresses bool) ItemView {
	kind := string(it.Kind)
	if kind == "" {
		kind = "message"
	}
	v := ItemView{ID: it.ID.String(), Kind: kind, Message: it.Msg.String(), Waiting: it.Waiting, Attempts: it.Attempts,
		Size: it.Size, Recipients: len(it.Envelope.RcptTo), Received: it.Received}
	if it.Waiting {
		v.SendAfter = it.SendAfter
	}
	switch {
	case it.Kind == queue.KindPacketOut:
		v.Stage = "to " + it.NextHop.Short()
	case it.Kind == queue.KindFragment:
		v.Stage = fmt.Sprintf("fragment %d/%d", it.FragIndex+1, it.FragCount)
	case it.Kind != queue.KindMessage:
		v.Stage = "mix"
	case it.Stage < len(cfg.Pipeline):
		v.Stage = cfg.Pipeline[it.Stage].Name
	}
	if addresses {
		v.MailFrom, v.RcptTo = it.Envelope.MailFrom, it.Envelope.RcptTo
	}
	return v
}

// ListItems lists every queue item, ordered by send_after then id.
func ListItems(cfg *config.Config, q *queue.Queue, addresses bool) ([]ItemView, error) {
	var out []ItemView
	err := q.Items(func(it *queue.Item) error {
		out = append(out, view(cfg, it, addresses))
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].SendAfter.Equal(out[j].SendAfter) {
			return out[i].SendAfter.Before(out[j].SendAfter)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

func (d *Daemon) startAdmin() error {
	p := socketPath(d.cfg)
	_ = os.Remove(p)
	ln, err := net.Listen("unix", p)
	if err != nil {
		return err
	}
	if err := os.Chmod(p, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, r *http.Request) {
		v, err := ListItems(d.cfg, d.q, r.URL.Query().Get("addresses") == "1")
		reply(w, v, err)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.statsView(), nil)
	})
	mux.HandleFunc("POST /flush", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]int{"flushed": d.engine.Scheduler().Flush()}, nil)
	})
	mux.HandleFunc("POST /delete", func(w http.ResponseWriter, r *http.Request) {
		id, err := queue.ParseID(r.URL.Query().Get("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		err = d.engine.DeleteItem(id)
		if errors.Is(err, queue.ErrNotFound) {
			http.Error(w, "no such item", http.StatusNotFound)
			return
		}
		reply(w, map[string]string{"deleted": id.String()}, err)
	})
	d.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go d.admin.Serve(ln)
	return nil
}

func (d *Daemon) statsView() StatsView {
	g := d.gauges()
	h, t := g.PluginsHealthy()
	lsm, vlog := d.q.DiskUsage()
	c := d.counters
	return StatsView{Received: c.Received.Load(), Sent: c.Sent.Load(), Deferred: c.Deferred.Load(), Failed: c.Failed.Load(),
		Rejected: c.Rejected.Load(), Dropped: c.Dropped.Load(), Queued: g.Queued(), Delayed: g.Delayed(),
		PluginsHealthy: h, Plugins: t, DiskLSM: lsm, DiskVlog: vlog}
}

// Line renders a StatsView like the [STATS] log line.
func (s StatsView) Line() string {
	c := &stats.Counters{}
	c.Received.Store(s.Received)
	c.Sent.Store(s.Sent)
	c.Deferred.Store(s.Deferred)
	c.Failed.Store(s.Failed)
	c.Rejected.Store(s.Rejected)
	c.Dropped.Store(s.Dropped)
	return stats.Line(c, stats.Gauges{
		Queued: func() int64 { return s.Queued }, Delayed: func() int64 { return s.Delayed },
		PluginsHealthy: func() (int, int) { return s.PluginsHealthy, s.Plugins },
	}) + fmt.Sprintf(" disk_lsm=%d disk_vlog=%d", s.DiskLSM, s.DiskVlog)
}

// ErrNotRunning means no daemon answers on the admin socket.
var ErrNotRunning = errors.New("daemon not running")

// AdminCall sends one request to a running daemon's admin socket and
// decodes the JSON reply into out. It returns ErrNotRunning when nothing
// listens on the socket.
func AdminCall(cfg *config.Config, method, path string, out any) error {
	p := socketPath(cfg)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", p)
		},
	}}
	req, err := http.NewRequest(method, "http://admin"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return ErrNotRunning
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon: %s", string(b))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
