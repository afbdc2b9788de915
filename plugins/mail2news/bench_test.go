package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mixmta/mixmta/sdk/plugintest/peers"
)

// BenchmarkPostToINN posts 1 KiB articles into a real INN through the
// plugin binary under the real plugin host (one new NNTP connection per
// article), sequentially and from 8 concurrent callers as the core's
// delivery workers would. It reports articles/s.
func BenchmarkPostToINN(b *testing.B) {
	inn := peers.INN(b)
	body := strings.Repeat("a line of text in a Usenet article body ......\n", 22)
	for _, method := range []string{"post", "ihave"} {
		p := startPlugin(b, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "method": method}}})
		var seq atomic.Int64
		run := func(b *testing.B) {
			for b.Loop() {
				m := newsMsg(fmt.Sprintf("bench-%s-%d", method, seq.Add(1)), "Newsgroups: alt.test\nSubject: bench", body)
				if err := deliver(b, p, m); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "articles/s")
		}
		b.Run(method+"/sequential", run)
		b.Run(method+"/parallel8", func(b *testing.B) {
			b.SetParallelism(4) // 2 cores x 4 = 8 callers
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := newsMsg(fmt.Sprintf("bench-%s-%d", method, seq.Add(1)), "Newsgroups: alt.test\nSubject: bench", body)
					if err := deliver(b, p, m); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "articles/s")
		})
	}
}
