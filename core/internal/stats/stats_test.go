package stats

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRegisterExportsMixCountersHistogramAndBuildInfo: the mix node's
// counters, the delivery latency histogram and mixmta_build_info are
// exported with their current values.
func TestRegisterExportsMixCountersHistogramAndBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := &Counters{}
	Register(reg, c, Gauges{Queued: func() int64 { return 2 }, Delayed: func() int64 { return 1 }, PluginsHealthy: func() (int, int) { return 3, 3 }})
	var m [12]atomic.Int64
	RegisterMix(reg, MixStats{Received: &m[0], Forwarded: &m[1], Exited: &m[2], Replays: &m[3], Dropped: &m[4], CoverSent: &m[5],
		CoverDropped: &m[6], LoopsSent: &m[7], LoopsBack: &m[8], LoopsLost: &m[9], Assembled: &m[10], Duplicates: &m[11],
		HealthyNodes: func() int { return 4 }})
	RegisterBuild(reg, "v1.2.3", "go1.99")
	m[1].Store(7)
	m[3].Store(2)
	c.Quarantined.Store(5)
	c.ObserveDelivery(2 * time.Second)
	c.ObserveDelivery(2 * time.Hour)
	mf, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range mf {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[f.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				name := f.GetName()
				for _, l := range m.GetLabel() {
					name += "," + l.GetName() + "=" + l.GetValue()
				}
				got[name] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				h := m.GetHistogram()
				got[f.GetName()+"_count"] = float64(h.GetSampleCount())
				for _, b := range h.GetBucket() {
					if b.GetUpperBound() == 5 {
						got[f.GetName()+"_le5"] = float64(b.GetCumulativeCount())
					}
				}
			}
		}
	}
	for name, want := range map[string]float64{
		"mixmta_build_info,goversion=go1.99,version=v1.2.3": 1,
		"mixmta_items_quarantined_total":                    5,
		"mixmta_mix_healthy_nodes":                          4,
		"mixmta_mix_packets_forwarded_total":                7,
		"mixmta_mix_replays_total":                          2,
		"mixmta_mix_loops_lost_total":                       0,
		"mixmta_delivery_latency_seconds_count":             2,
		"mixmta_delivery_latency_seconds_le5":               1,
		"mixmta_queue_items":                                2,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}
