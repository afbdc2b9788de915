package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// go test -run '^$' -bench . -benchtime 2s ./plugins/sphinx/

// BenchmarkRoute: a whole message to packets at the entry (encoding,
// fragmentation, path choice, one NewPacket per fragment).
func BenchmarkRoute(b *testing.B) {
	net := newTestNet(b, 6, testConfig(), 3, 4, 5)
	for _, size := range []int{1 << 10, 200 << 10, 2 << 20} {
		m := testMessage(size, 1)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := net.nodes[0].stage.Route(context.Background(), m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMix: one hop of one packet in process (copy + Unwrap with the
// current key + result), the plugin's share of a mix node's work.
func BenchmarkMix(b *testing.B) {
	net := newTestNet(b, 5, testConfig(), 4)
	routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(1000, 1))
	if err != nil {
		b.Fatal(err)
	}
	r := routes[0]
	nd := net.byID[r.NextHop]
	b.SetBytes(int64(len(r.Body)))
	for b.Loop() {
		if _, err := nd.stage.Mix(context.Background(), r.Body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMixRPC: the same hop through the real plugin host (gRPC over a
// Unix socket, 64 KiB in and out), from as many goroutines as GOMAXPROCS.
func BenchmarkMixRPC(b *testing.B) {
	bin := plugintest.Build(b, ".")
	net := newTestNetAt(b, uint64(time.Now().Unix()/3600), 5, testConfig(), 4)
	routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(1000, 1))
	if err != nil {
		b.Fatal(err)
	}
	r := routes[0]
	c := plugintest.Start(b, bin, "")
	if err := c.SetMixState(context.Background(), net.stateOf(net.byID[r.NextHop])); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(r.Body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := c.Mix(context.Background(), r.Body)
			if err != nil || res.Action != sdk.MixForward {
				b.Errorf("Mix: %v", err)
				return
			}
		}
	})
}

// BenchmarkCover: one cover packet of each kind.
func BenchmarkCover(b *testing.B) {
	net := newTestNet(b, 5, testConfig(), 4)
	for _, k := range []sdk.CoverKind{sdk.CoverDrop, sdk.CoverLoop} {
		b.Run(fmt.Sprint(map[sdk.CoverKind]string{sdk.CoverDrop: "drop", sdk.CoverLoop: "loop"}[k]), func(b *testing.B) {
			for b.Loop() {
				if _, err := net.nodes[0].stage.Cover(context.Background(), k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
