package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// Many packets mixed at once by one plugin process through the real host:
// the calls share round trips on the call stream (at least 1.5 packets per
// batch on average), and every result (forward packet and next hop, exit
// fragment, replay tag, epoch) is the one the same stage gives in process.
// Tampered packets in the same batches come back as permanent errors and
// fail no other packet of their batch. More packets are in flight than the
// body region has slots, so some take the inline path.
func TestMixOverCallStreamBatchesAndMatchesInProcess(t *testing.T) {
	bin := plugintest.Build(t, ".")
	net := newTestNetAt(t, uint64(time.Now().Unix()/3600), 5, testConfig(), 3, 4)
	x, next := net.nodes[3], net.nodes[1] // x is an exit
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := plugintest.Start(t, bin, `{"hops": 3}`)
	if err := c.SetMixState(ctx, net.stateOf(x)); err != nil {
		t.Fatal(err)
	}
	hop := func(nd *testNode) sphinx.Hop {
		return sphinx.Hop{NodeID: nd.id, MixKey: nd.keys[net.epoch].PublicKey().Bytes()}
	}

	const n = 96
	type packet struct {
		data []byte
		bad  bool
	}
	pkts := make([]packet, n)
	for i := range pkts {
		var data []byte
		var err error
		switch i % 3 {
		case 0, 2: // forward to next (case 2 is then tampered with)
			payload := make([]byte, 100)
			data, err = sphinx.NewPacket(sphinx.DefaultGeometry(), []sphinx.Hop{hop(x), hop(next)}, sphinx.Drop, payload, rand.Reader)
		case 1: // a message fragment exiting at x
			payload := make([]byte, fragmentHeaderSize+1000)
			putFragmentHeader(payload, [16]byte{byte(i)}, 0, 1)
			copy(payload[fragmentHeaderSize:], bytes.Repeat([]byte{byte(i)}, 1000))
			data, err = sphinx.NewPacket(sphinx.DefaultGeometry(), []sphinx.Hop{hop(x)}, sphinx.Exit, payload, rand.Reader)
		}
		if err != nil {
			t.Fatal(err)
		}
		pkts[i] = packet{data: data}
		if i%3 == 2 {
			data[200] ^= 1
			pkts[i].bad = true
		}
	}

	calls0, batches0 := c.Batched()
	results := make([]*sdk.MixResult, n)
	errs := make([]error, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range pkts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			results[i], errs[i] = c.Mix(ctx, pkts[i].data)
		}()
	}
	start.Done()
	wg.Wait()
	calls1, batches1 := c.Batched()
	calls, batches := calls1-calls0, batches1-batches0
	if calls != n || batches < 1 || 2*calls < 3*batches {
		t.Errorf("%d Mix calls in %d batches on the call stream: want %d calls, at least 1.5 per batch on average", calls, batches, n)
	}
	t.Logf("%d Mix calls in %d batches", calls, batches)

	for i, p := range pkts {
		want, wantErr := x.stage.Mix(context.Background(), p.data)
		got, err := results[i], errs[i]
		if p.bad {
			if !sdk.IsPermanent(err) || !sdk.IsPermanent(wantErr) {
				t.Errorf("packet %d (tampered): got %v, want a permanent error (in process: %v)", i, err, wantErr)
			}
			continue
		}
		if err != nil || wantErr != nil {
			t.Errorf("packet %d: over the stream %v, in process %v", i, err, wantErr)
			continue
		}
		if got.Action != want.Action || got.NextHop != want.NextHop || !bytes.Equal(got.Packet, want.Packet) ||
			got.ReplayTag != want.ReplayTag || got.Epoch != want.Epoch || got.LoopID != want.LoopID ||
			(got.Fragment == nil) != (want.Fragment == nil) {
			t.Errorf("packet %d: result over the stream differs from the one in process (action %d/%d, %d/%d packet bytes)",
				i, got.Action, want.Action, len(got.Packet), len(want.Packet))
			continue
		}
		if f, wf := got.Fragment, want.Fragment; f != nil && (f.MessageID != wf.MessageID || f.Index != wf.Index || f.Count != wf.Count || !bytes.Equal(f.Data, wf.Data)) {
			t.Errorf("packet %d: fragment over the stream differs from the one in process", i)
		}
		switch i % 3 {
		case 0:
			if got.Action != sdk.MixForward || got.NextHop != next.id || len(got.Packet) != len(p.data) {
				t.Errorf("packet %d: action %d to %s with %d bytes, want a forward to %s", i, got.Action, got.NextHop.Short(), len(got.Packet), next.id.Short())
			}
		case 1:
			if got.Action != sdk.MixExit || got.Fragment == nil || len(got.Fragment.Data) != 1000 {
				t.Errorf("packet %d: action %d, want an exit with a 1000-byte fragment", i, got.Action)
			}
		}
	}
}
