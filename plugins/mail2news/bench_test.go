package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mixmta/mixmta/internal/peers"
)

// BenchmarkPostToINN posts 1 KiB articles into a real INN through the
// plugin binary under the real plugin host, sequentially and from 8
// concurrent callers as the core's delivery workers would: with POST and
// IHAVE over kept sessions (the default), and with POST over a new
// connection per article (max_idle 0) for comparison. It reports
// articles/s.
func BenchmarkPostToINN(b *testing.B) {
	inn := peers.INN(b)
	body := strings.Repeat("a line of text in a Usenet article body ......\n", 22)
	var seq atomic.Int64
	for _, v := range []struct {
		name, method string
		maxIdle      int
	}{{"post", "post", 2}, {"post-new-connection", "post", 0}, {"ihave", "ihave", 2}, {"ihave-new-connection", "ihave", 0}} {
		p := startPlugin(b, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "method": v.method}}, "max_idle": v.maxIdle})
		post := func() error {
			m := newsMsg(fmt.Sprintf("bench-%d", seq.Add(1)), "Newsgroups: alt.test\nSubject: bench", body)
			return deliver(b, p, m)
		}
		b.Run(v.name+"/sequential", func(b *testing.B) {
			for b.Loop() {
				if err := post(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "articles/s")
		})
		b.Run(v.name+"/parallel8", func(b *testing.B) {
			b.SetParallelism(4) // 2 cores x 4 = 8 callers
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := post(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "articles/s")
		})
	}
}
