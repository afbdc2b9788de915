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
	"strings"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/pipeline"
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
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// Stage names the stage the item waits for: the one that failed for
	// a deferred or held item, the deliverer for an item in the pool.
	Stage   string `json:"stage"`
	Waiting bool   `json:"waiting"`
	// Held: quarantined or held by the operator; Reason says why it
	// waits or is held (a stage and a reply code, never an address).
	Held       bool      `json:"held"`
	Reason     string    `json:"reason,omitempty"`
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

// view renders an item; waitsFor, if not nil, names the stage a message
// item waits for (the engine knows the stage kinds; without a running
// daemon the reason's stage or the item's next stage is shown).
func view(cfg *config.Config, it *queue.Item, addresses bool, waitsFor func(*queue.Item) string) ItemView {
	kind := string(it.Kind)
	if kind == "" {
		kind = "message"
	}
	v := ItemView{ID: it.ID.String(), Kind: kind, Message: it.Msg.String(), Waiting: it.Waiting, Attempts: it.Attempts,
		Size: it.Size, Recipients: len(it.Envelope.RcptTo), Received: it.Received, Held: it.Held, Reason: it.Reason}
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
	case waitsFor != nil:
		v.Stage = waitsFor(it)
	case strings.Contains(it.Reason, ": "):
		v.Stage, _, _ = strings.Cut(it.Reason, ": ")
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
	return listItems(cfg, q, addresses, nil)
}

func listItems(cfg *config.Config, q *queue.Queue, addresses bool, waitsFor func(*queue.Item) string) ([]ItemView, error) {
	var out []ItemView
	err := q.Items(func(it *queue.Item) error {
		out = append(out, view(cfg, it, addresses, waitsFor))
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
		v, err := listItems(d.cfg, d.q, r.URL.Query().Get("addresses") == "1", d.engine.WaitsFor)
		reply(w, v, err)
	})
	mux.HandleFunc("GET /show", func(w http.ResponseWriter, r *http.Request) {
		id, err := queue.ParseID(r.URL.Query().Get("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		v, err := ShowItem(d.cfg, d.q, id, r.URL.Query().Get("addresses") == "1", d.engine.WaitsFor)
		if errors.Is(err, queue.ErrNotFound) {
			http.Error(w, "no such item", http.StatusNotFound)
			return
		}
		reply(w, v, err)
	})
	for _, op := range []struct {
		path string
		fn   func(queue.ID) error
	}{{"/hold", d.engine.HoldItem}, {"/release", d.engine.ReleaseItem}, {"/requeue", d.engine.RequeueItem}} {
		mux.HandleFunc("POST "+op.path, func(w http.ResponseWriter, r *http.Request) {
			id, err := queue.ParseID(r.URL.Query().Get("id"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			err = op.fn(id)
			switch {
			case errors.Is(err, queue.ErrNotFound):
				http.Error(w, "no such item", http.StatusNotFound)
			case errors.Is(err, pipeline.ErrBusy), errors.Is(err, pipeline.ErrNotHeld):
				http.Error(w, err.Error(), http.StatusConflict)
			default:
				reply(w, map[string]string{"id": id.String()}, err)
			}
		})
	}
	mux.HandleFunc("POST /delete-all", func(w http.ResponseWriter, r *http.Request) {
		n, err := d.engine.DeleteAll()
		reply(w, map[string]int{"deleted": n}, err)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.statsView(), nil)
	})
	mux.HandleFunc("GET /mixnet/stats", func(w http.ResponseWriter, r *http.Request) {
		if d.mix == nil {
			http.Error(w, "this daemon runs no mix node (no mix: section)", http.StatusNotFound)
			return
		}
		reply(w, d.mix.node.LoopStats(), nil)
	})
	mux.HandleFunc("POST /flush", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]int{"flushed": d.engine.Scheduler().ReleaseAll()}, nil)
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

// ItemDetail is `mixmta queue show ID`: the item and its header section.
// The header is shown without the address fields (From, To, Cc, Bcc,
// Reply-To, Sender, Return-Path, Delivered-To, Received...) unless
// addresses are asked for.
type ItemDetail struct {
	ItemView
	// Header is the header section; without addresses, the address fields
	// are left out and addresses elsewhere are replaced by "***".
	Header string `json:"header"`
	// HeaderHidden lists the fields left out for privacy.
	HeaderHidden []string `json:"header_hidden,omitempty"`
	BodyBytes    int64    `json:"body_bytes"`
}

// addressFields may carry addresses or hosts of the sender or recipients.
var addressFields = map[string]bool{"from": true, "to": true, "cc": true, "bcc": true, "reply-to": true, "sender": true,
	"return-path": true, "delivered-to": true, "received": true, "x-original-to": true, "resent-from": true,
	"resent-to": true, "resent-cc": true, "resent-sender": true, "message-id": true, "in-reply-to": true, "references": true}

// ShowItem loads one item and its header section.
func ShowItem(cfg *config.Config, q *queue.Queue, id queue.ID, addresses bool, waitsFor func(*queue.Item) string) (ItemDetail, error) {
	it, err := q.Get(id)
	if err != nil {
		return ItemDetail{}, err
	}
	d := ItemDetail{ItemView: view(cfg, it, addresses, waitsFor), BodyBytes: it.Size}
	h, err := q.Blob(it.Header)
	if err != nil && !errors.Is(err, queue.ErrNotFound) {
		return d, err
	}
	d.BodyBytes -= int64(len(h))
	if addresses {
		d.Header = string(h)
		return d, nil
	}
	var b strings.Builder
	skip := false
	for _, line := range strings.SplitAfter(string(h), "\n") {
		if line == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			name, _, ok := strings.Cut(line, ":")
			skip = ok && addressFields[strings.ToLower(strings.TrimSpace(name))]
			if skip {
				d.HeaderHidden = append(d.HeaderHidden, strings.TrimSpace(name))
			}
		}
		if !skip {
			// Any other field may carry an address too (Disposition-
			// Notification-To, Authentication-Results' smtp.mailfrom,
			// a DKIM i=, a Subject): redacted where it appears.
			b.WriteString(pipeline.RedactAddresses(line))
		}
	}
	d.Header = b.String()
	return d, nil
}
