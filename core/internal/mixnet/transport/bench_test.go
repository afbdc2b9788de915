package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// BenchmarkLinkThroughput sends 64 KiB packets over one link on loopback
// (TLS 1.3, window 32) with a no-op handler, from enough goroutines to fill
// the window, and reports packets/s. The handler's durable sync is not
// included: this is the transport's own ceiling.
//
//	go test -run '^$' -bench LinkThroughput -benchtime 5000x ./core/internal/mixnet/transport
func BenchmarkLinkThroughput(b *testing.B) {
	for _, senders := range []int{1, 32, 64} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
			benchLink(b, senders, func(context.Context, sdk.NodeID, []byte) error { return nil })
		})
	}
	// A handler that takes 1 ms (a group-commit sync): one sender waits
	// for every ack (<= 1,000 packets/s); a full window hides the sync.
	for _, senders := range []int{1, 64} {
		b.Run(fmt.Sprintf("senders=%d/handler=1ms", senders), func(b *testing.B) {
			benchLink(b, senders, func(context.Context, sdk.NodeID, []byte) error { time.Sleep(time.Millisecond); return nil })
		})
	}
}

func benchLink(b *testing.B, senders int, h Handler) {
	x, y := newNode(b), newNode(b)
	tx := newTransport(b, x, Config{})
	ty := newTransport(b, y, Config{}, x)
	l := listen(b, ty, h)
	link, err := tx.Dial(context.Background(), y.peer(l.Addr().String()))
	if err != nil {
		b.Fatal(err)
	}
	pkts := make([][]byte, senders)
	for i := range pkts {
		pkts[i] = packet(DefaultPacketSize, uint64(i))
	}
	b.SetBytes(DefaultPacketSize)
	b.ResetTimer()
	start := time.Now()
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if err := link.Send(context.Background(), pkts[i]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "packets/s")
}
