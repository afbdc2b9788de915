package transport

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// TestIdleConnectionKeepsOneFrameBuffer: after 16 senders pushed 128
// frames through one link, up to 16 handled at once, every frame buffer
// the listener made but the one it reads the next frame into becomes
// garbage once the link is idle (the link stays open), so a node at rest
// holds one frame buffer per connection, not Window. The code this
// replaced kept each buffer in its connection's slot for the connection's
// lifetime: the test failed on it with none of them freed.
func TestIdleConnectionKeepsOneFrameBuffer(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	var made, freed atomic.Int64
	tb.bufs.New = func() any {
		buf := make([]byte, 1024)
		made.Add(1)
		p := &buf
		runtime.SetFinalizer(p, func(*[]byte) { freed.Add(1) })
		return p
	}
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error {
		time.Sleep(2 * time.Millisecond) // let frames overlap
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	var wg sync.WaitGroup
	for s := 0; s < 16; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 8; i++ {
				if err := link.Send(context.Background(), packet(1024, uint64(s*8+i))); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if made.Load() < 2 {
		t.Fatalf("the listener made %d frame buffers for 16 concurrent senders; the test needs overlapping frames", made.Load())
	}
	deadline := time.Now().Add(10 * time.Second)
	for freed.Load() < made.Load()-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frame buffers still held by an idle connection; want 1 (the next frame's)", made.Load()-freed.Load(), made.Load())
		}
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
}
