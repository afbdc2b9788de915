// Package stats holds the daemon's counters and gauges, shown in the
// periodic [STATS] log line and exported to Prometheus. No metric carries
// an address or any other label that could identify a user.
package stats

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
	// Quarantined: items held after failing their stage repeatedly or
	// crashing its plugin (see `mixmta queue ls`).
	Quarantined atomic.Int64
	// SMTPFull: MAIL and DATA answered 452 4.3.1 because the data dir's
	// free space was below the reserve.
	SMTPFull atomic.Int64
	// SMTPQueueFull: MAIL, RCPT and DATA answered 451 4.3.2 because the
	// queue held queue.max_items.
	SMTPQueueFull atomic.Int64

	once sync.Once
	// delivery is the time from acceptance (250) to a delivery attempt's
	// outcome, in seconds.
	delivery prometheus.Histogram
}

// DeliveryBuckets are the delivery latency histogram's upper bounds in
// seconds: from a direct delivery (100 ms) to a mixnet's hours of delay
// and the days a retried message may wait.
var DeliveryBuckets = []float64{0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400}

func (c *Counters) histogram() prometheus.Histogram {
	c.once.Do(func() {
		c.delivery = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mixmta_delivery_latency_seconds",
			Help:    "Time from acceptance (250) to the outcome of each delivery attempt.",
			Buckets: DeliveryBuckets,
		})
	})
	return c.delivery
}

// ObserveDelivery records one delivery attempt's latency since acceptance.
func (c *Counters) ObserveDelivery(d time.Duration) { c.histogram().Observe(d.Seconds()) }

// MixStats are a mix node's counters (mixnet.Stats), exported when the
// node is a mix.
type MixStats struct {
	Received, Forwarded, Exited, Replays, Dropped, CoverSent, CoverDropped *atomic.Int64
	LoopsSent, LoopsBack, LoopsLost, Assembled, Duplicates                 *atomic.Int64
	HealthyNodes                                                           func() int
}

// RegisterMix exports a mix node's counters under mixmta_mix_.
func RegisterMix(reg prometheus.Registerer, m MixStats) {
	for _, c := range []struct {
		name, help string
		v          *atomic.Int64
	}{
		{"packets_received_total", "Sphinx packets received from other mixes.", m.Received},
		{"packets_forwarded_total", "Packets unwrapped and forwarded to the next hop.", m.Forwarded},
		{"packets_exited_total", "Packets whose payload left the mixnet here (exit).", m.Exited},
		{"replays_total", "Packets refused because their replay tag was seen.", m.Replays},
		{"packets_dropped_total", "Packets dropped (malformed, bad MAC, drop cover).", m.Dropped},
		{"cover_sent_total", "Drop cover packets sent.", m.CoverSent},
		{"cover_dropped_total", "Drop cover packets received and discarded.", m.CoverDropped},
		{"loops_sent_total", "Loop cover packets sent.", m.LoopsSent},
		{"loops_returned_total", "Loop cover packets that came back.", m.LoopsBack},
		{"loops_lost_total", "Loop cover packets that did not come back in time.", m.LoopsLost},
		{"messages_assembled_total", "Messages reassembled from exit fragments.", m.Assembled},
		{"duplicates_total", "Reassembled messages dropped as duplicates.", m.Duplicates},
	} {
		v := c.v
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mixmta_mix_" + c.name, Help: c.help},
			func() float64 { return float64(v.Load()) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mixmta_mix_healthy_nodes", Help: "Other nodes this node considers healthy."},
		func() float64 { return float64(m.HealthyNodes()) }))
}

// RegisterBuild exports mixmta_build_info{version,goversion} = 1.
func RegisterBuild(reg prometheus.Registerer, version, goVersion string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "mixmta_build_info", Help: "Always 1; the labels name the build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goVersion}})
	g.Set(1)
	reg.MustRegister(g)
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
	counter("items_quarantined_total", "Items quarantined after failing their stage repeatedly.", &c.Quarantined)
	counter("smtp_disk_full_total", "MAIL/DATA refused with 452 4.3.1 for lack of disk space.", &c.SMTPFull)
	counter("smtp_queue_full_total", "MAIL/RCPT/DATA refused with 451 4.3.2 because the queue held queue.max_items.", &c.SMTPQueueFull)
	counter("sphinx_messages_total", "Messages turned into Sphinx packets at this entry.", &c.SphinxMessages)
	counter("sphinx_packets_total", "Sphinx packets made of them.", &c.SphinxPackets)
	reg.MustRegister(c.histogram())
	gauge("queue_items", "Items in the queue.", func() float64 { return float64(g.Queued()) })
	gauge("queue_delayed_items", "Items waiting for their send_after.", func() float64 { return float64(g.Delayed()) })
	gauge("plugins_healthy", "Plugin processes running.", func() float64 { h, _ := g.PluginsHealthy(); return float64(h) })
}
