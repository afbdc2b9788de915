package daemon

import (
	"context"
	"time"

	"github.com/mixmta/mixmta/core/internal/cover"
	"github.com/mixmta/mixmta/sdk"
)

// startCover runs the cover generator of the `cover:` section: its
// messages enter the queue at stage 0, like mail accepted by SMTP, and are
// skipped while the data dir is below its free-space reserve or the queue
// holds half of queue.max_items (coverRoom).
func (d *Daemon) startCover(ctx context.Context) {
	c := d.cfg.Cover
	if c == nil {
		return
	}
	g := cover.New(cover.Options{Interval: c.Interval.D(), From: c.From, To: c.To, MinSize: c.MinSize, MaxSize: c.MaxSize, Hostname: d.cfg.Hostname}, d.log.Named("cover"))
	g.Room = d.coverRoom
	d.log.Info("[COVER] cover messages on", "interval", c.Interval.D(), "sinks", len(c.To))
	go g.Run(ctx, func(env sdk.Envelope, h, b []byte, received time.Time) error {
		it, err := d.q.Accept(env, h, b, received)
		if err != nil {
			return err
		}
		d.engine.Submit(it)
		return nil
	})
}

// coverRoom reports whether a cover message of size bytes may enter the
// queue: there is disk space above the reserve, and the queue holds less
// than half of queue.max_items. Cover items are deferred and retried like
// real mail (nothing tells them apart in the queue), so with the cover
// sink down they pile up for the whole retry schedule; without the half
// they would fill the queue and every real message would get 451 4.3.2.
func (d *Daemon) coverRoom(size int64) bool {
	if limit := d.cfg.Queue.MaxItems; limit > 0 && 2*d.engine.Queued() >= limit {
		return false
	}
	return d.HasSpace(size)
}
