package mixnet

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"math"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// coverLoop sends cover packets of kind k with exponential inter-arrival
// times of mean 1/rate seconds (a Poisson process, Loopix §4.2).
func (n *Node) coverLoop(ctx context.Context, k sdk.CoverKind, rate float64) {
	for {
		wait := time.Duration(expSample(1/rate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := n.queueCover(ctx, k, &n.Stats.CoverSent); err != nil {
			n.log.Debug("[MIX] no cover packet", "error", err)
		}
	}
}

// queueCover builds a cover packet of kind k and queues it for the pool,
// counting it in sent.
func (n *Node) queueCover(ctx context.Context, k sdk.CoverKind, sent *atomic.Int64) error {
	p, err := n.mixer.Cover(ctx, k)
	if err != nil {
		return err
	}
	n.learnPathLen(p)
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: p.NextHop,
		Received: time.Now(), SendAfter: time.Now(), Waiting: true, Deliverer: -1}
	if err := n.eng.Commit(func(tx *pipeline.Tx) error { return tx.Put(it, p.Data) }); err != nil {
		return err
	}
	sent.Add(1)
	if k == sdk.CoverLoop {
		n.Stats.LoopsSent.Add(1)
		now := time.Now()
		d := now.Add(n.loopTimeout(p.Path))
		// counted out before it can come back: loopBack may run as soon
		// as the loop is in n.loops
		n.loopStats.sent(n.self, p.Path, now)
		n.mu.Lock()
		n.loops[p.LoopID] = loop{sent: now, deadline: d, path: p.Path}
		n.mu.Unlock()
	}
	n.eng.Schedule(it)
	return nil
}

func (n *Node) loopBack(id [16]byte) {
	n.mu.Lock()
	l, ok := n.loops[id]
	delete(n.loops, id)
	n.mu.Unlock()
	if !ok {
		return // sent before a restart: nothing to credit
	}
	n.Stats.LoopsBack.Add(1)
	now := time.Now()
	n.loopStats.finished(n.self, l.path, now, now.Sub(l.sent), false)
	for _, h := range l.path {
		n.health.ok(h)
	}
}

// expSample draws Exp(mean) from crypto/rand.
func expSample(mean float64) float64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	u := (float64(binary.LittleEndian.Uint64(b[:])>>11) + 0.5) / (1 << 53)
	return -mean * math.Log(u)
}

type loop struct {
	sent     time.Time
	deadline time.Time
	path     []sdk.NodeID
}
