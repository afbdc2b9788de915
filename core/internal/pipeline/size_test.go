package pipeline

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// TestTransformerAfterATransformerSeesTheNewSize: transformers that run
// at release (after the delay) see in Message.Size the size of the message
// as the previous transformer left it (a padding stage depends on it).
func TestTransformerAfterATransformerSeesTheNewSize(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	grow := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		return &sdk.Change{Header: append([]byte("X-Added: 0123456789012345678901234567890123456789\r\n"), m.Header...)}, nil
	}}
	var seen, want atomic.Int64
	look := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		seen.Store(m.Size)
		want.Store(int64(len(m.Header)) + int64(len("body\r\n")))
		return nil, nil
	}}
	dl := &fakeStage{deliver: okAll}
	e, _ := runEngine(t, q, []Stage{
		{Name: "delay", Kind: sdk.KindDelayer, Impl: &fakeStage{delay: 10 * time.Millisecond}},
		{Name: "grow", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: grow},
		{Name: "look", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: look},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{})
	accept(t, q, e, "b@example.net")
	eventually(t, "delivery", func() bool { return dl.count() == 1 })
	if seen.Load() != want.Load() {
		t.Fatalf("second transformer saw Size %d, want %d (header as changed + body)", seen.Load(), want.Load())
	}
}
