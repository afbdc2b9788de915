// Package stats holds the daemon's counters and gauges, shown in the
// periodic [STATS] log line and exported to Prometheus. No metric carries
// an address or any other label that could identify a user.
package stats

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Counters are monotonically increasing event counts since start.
type Counters struct {
	// Received: messages accepted with 250.
	Received atomic.Int64
	// Rejected: SMTP commands refused (policy, limits, checkers).
	Rejected atomic.Int64
	// Sent: recipients delivered.
	Sent atomic.Int64
	// Deferred: recipient delivery attempts that failed temporarily.
	Deferred atomic.Int64
	// Failed: recipients given up on (permanent failure, attempts or
	// lifetime exhausted).
	Failed atomic.Int64
	// Dropped: items dropped by a stage (e.g. a malformed packet).
	Dropped atomic.Int64
	// PluginRestarts: plugin processes restarted after a crash.
	PluginRestarts atomic.Int64
	// SphinxMessages: messages turned into Sphinx packets at this entry;
	// SphinxPackets: the packets made of them.
	SphinxMessages atomic.Int64
	SphinxPackets  atomic.Int64
}

// Gauges are read on demand.
type Gauges struct {
	Queued         func() int64
	Delayed        func() int64
	PluginsHealthy func() (healthy, total int)
}

// Line formats the [STATS] log line.
func Line(c *Counters, g Gauges) string {
	h, t := g.PluginsHealthy()
	return fmt.Sprintf("received=%d sent=%d deferred=%d failed=%d rejected=%d dropped=%d queued=%d delayed=%d plugins_healthy=%d/%d",
		c.Received.Load(), c.Sent.Load(), c.Deferred.Load(), c.Failed.Load(), c.Rejected.Load(), c.Dropped.Load(),
		g.Queued(), g.Delayed(), h, t)
}

// Register exports the counters and gauges to reg under the mixmta_ prefix.
func Register(reg prometheus.Registerer, c *Counters, g Gauges) {
	counter := func(name, help string, v *atomic.Int64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mixmta_" + name, Help: help},
			func() float64 { return float64(v.Load()) }))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mixmta_" + name, Help: help}, f))
	}
	counter("messages_received_total", "Messages accepted with 250.", &c.Received)
	counter("smtp_rejected_total", "SMTP commands refused.", &c.Rejected)
	counter("recipients_sent_total", "Recipients delivered.", &c.Sent)
	counter("recipients_deferred_total", "Recipient delivery attempts that failed temporarily.", &c.Deferred)
	counter("recipients_failed_total", "Recipients given up on.", &c.Failed)
	counter("items_dropped_total", "Items dropped by a stage.", &c.Dropped)
	counter("plugin_restarts_total", "Plugin processes restarted.", &c.PluginRestarts)
	gauge("queue_items", "Items in the queue.", func() float64 { return float64(g.Queued()) })
	gauge("queue_delayed_items", "Items waiting for their send_after.", func() float64 { return float64(g.Delayed()) })
	gauge("plugins_healthy", "Plugin processes running.", func() float64 { h, _ := g.PluginsHealthy(); return float64(h) })
}
