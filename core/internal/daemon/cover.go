package daemon

import (
	"context"
	"time"

	"github.com/mixmta/mixmta/core/internal/cover"
	"github.com/mixmta/mixmta/sdk"
)

// startCover runs the cover generator of the `cover:` section: its
// messages enter the queue at stage 0, like mail accepted by SMTP, and are
// skipped while the data dir is below its free-space reserve.
func (d *Daemon) startCover(ctx context.Context) {
	c := d.cfg.Cover
	if c == nil {
		return
	}
	g := cover.New(cover.Options{Interval: c.Interval.D(), From: c.From, To: c.To, MinSize: c.MinSize, MaxSize: c.MaxSize, Hostname: d.cfg.Hostname}, d.log.Named("cover"))
	g.Room = d.HasSpace
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
