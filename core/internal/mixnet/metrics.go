package mixnet

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Register exports the mix node's sending-schedule and path figures to reg
// under the mixmta_mix_ prefix (stats.RegisterMix exports its packet
// counters): counters and gauges only, no label that could name a node.
func (n *Node) Register(reg prometheus.Registerer) {
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mixmta_mix_" + name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mixmta_mix_" + name, Help: help}, f))
	}
	gauge("send_queue_packets", "Own packets waiting for a tick of the sending schedule.", func() float64 { return float64(n.SendQueueLen()) })
	gauge("send_queue_oldest_wait_seconds", "How long the oldest packet in the send queue has waited.", func() float64 {
		o, _ := n.SendQueueWait()
		return o.Seconds()
	})
	gauge("send_queue_last_wait_seconds", "How long the last own packet sent had waited in the send queue.", func() float64 {
		_, l := n.SendQueueWait()
		return l.Seconds()
	})
	gauge("paths_available", "1 when enough healthy nodes are known for a full path, 0 while mail is held for want of them.", func() float64 {
		if n.pathsDown.Load() {
			return 0
		}
		return 1
	})
	counter("pool_dummies_total", "Drop packets added to a starving pool (Mixmaster dummies).", func() float64 { return float64(n.Stats.PoolDummies.Load()) })
	counter("own_packets_sent_total", "Own packets sent at a tick of the sending schedule.", func() float64 { return float64(n.Stats.OwnSent.Load()) })
	counter("tick_drops_sent_total", "Drop packets sent at ticks of the sending schedule with no own packet waiting.", func() float64 { return float64(n.Stats.TickDrops.Load()) })
	counter("ticks_missed_total", "Ticks of the sending schedule at which nothing could be sent.", func() float64 { return float64(n.Stats.TicksMissed.Load()) })
}
