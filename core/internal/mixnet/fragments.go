package mixnet

import (
	"context"
	"time"

	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// fragment re-indexes a fragment item loaded at start.
func (n *Node) fragment(ctx context.Context, it *queue.Item) error {
	if time.Since(it.Received) > n.cfg.FragmentTTL {
		n.Stats.Dropped.Add(1)
		return n.eng.Finish(it)
	}
	n.addFragment(ctx, it)
	return nil
}

// addFragment indexes a stored fragment and assembles its message when
// every fragment is there.
func (n *Node) addFragment(ctx context.Context, it *queue.Item) {
	n.mu.Lock()
	set := n.fragments[it.Msg]
	if set == nil {
		set = map[int]*queue.Item{}
		n.fragments[it.Msg] = set
	}
	if old, dup := set[it.FragIndex]; dup && old.ID != it.ID {
		// The same fragment twice (by another path): keep the first.
		n.mu.Unlock()
		n.Stats.Duplicates.Add(1)
		_ = n.eng.Finish(it)
		return
	}
	set[it.FragIndex] = it
	complete := len(set) == it.FragCount
	var parts []*queue.Item
	if complete {
		delete(n.fragments, it.Msg)
		for i := 0; i < it.FragCount; i++ {
			p, ok := set[i]
			if !ok || p.FragCount != it.FragCount {
				complete = false
				break
			}
			parts = append(parts, p)
		}
		if !complete { // inconsistent counts: keep waiting, sweep drops them
			n.fragments[it.Msg] = set
		}
	}
	n.mu.Unlock()
	if complete {
		if err := n.assemble(ctx, parts); err != nil {
			n.log.Error("[MIX] assembly failed; fragments kept, retrying in 10s", "error", err)
			n.mu.Lock()
			n.fragments[it.Msg] = set
			n.mu.Unlock()
			// Try again later: re-adding the last fragment re-checks the set.
			time.AfterFunc(10*time.Second, func() {
				if ctx.Err() == nil {
					n.mu.Lock()
					delete(n.fragments[it.Msg], it.FragIndex)
					n.mu.Unlock()
					n.addFragment(ctx, it)
				}
			})
		}
	}
}

// assemble turns a complete fragment set into a message item that resumes
// the pipeline at the exit stage, in one transaction that also records the
// message id (a duplicate message is dropped).
func (n *Node) assemble(ctx context.Context, parts []*queue.Item) error {
	q := n.eng.Queue()
	var data []byte
	for _, p := range parts {
		b, err := q.Blob(p.Body)
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	msg, err := n.mixer.Assemble(ctx, data)
	if err == nil && n.cfg.Blocked != nil {
		var keep []string
		for _, r := range msg.Envelope.RcptTo {
			if !n.cfg.Blocked(r) {
				keep = append(keep, r)
			}
		}
		if len(keep) < len(msg.Envelope.RcptTo) {
			n.log.Info("[MIX] recipients opted out at exit; not delivered to them", "opted_out", len(msg.Envelope.RcptTo)-len(keep), "left", len(keep))
			msg.Envelope.RcptTo = keep
			if len(keep) == 0 {
				err = sdk.Permanent(550, "7.1", "every recipient has opted out of anonymous mail")
			}
		}
	}
	if err != nil {
		if sdk.IsPermanent(err) {
			n.Stats.Dropped.Add(1)
			n.eng.Counters().Dropped.Add(1)
			n.log.Info("[MIX] reassembled message malformed or without recipients; dropped", "fragments", len(parts))
			err := n.eng.Commit(func(tx *pipeline.Tx) error {
				for _, p := range parts {
					if err := tx.Delete(p); err != nil {
						return err
					}
				}
				return nil
			})
			return err
		}
		return err
	}
	it := &queue.Item{ID: queue.NewID(), Envelope: msg.Envelope, Stage: n.cfg.ExitStage, Received: time.Now(), Deliverer: -1}
	it.Msg = it.ID
	dup := false
	err = n.eng.Commit(func(tx *pipeline.Tx) error {
		seen, err := tx.Mark(append([]byte("msgid/"), parts[0].Msg[:]...), n.cfg.MessageIDTTL)
		if err != nil {
			return err
		}
		dup = seen
		for _, p := range parts {
			if err := tx.Delete(p); err != nil {
				return err
			}
		}
		if seen {
			return nil
		}
		return tx.Insert(it, msg.Header, msg.Body)
	})
	if err != nil {
		return err
	}
	if dup {
		n.Stats.Duplicates.Add(1)
		n.log.Info("[MIX] duplicate message dropped at exit")
		return nil
	}
	n.Stats.Assembled.Add(1)
	n.log.Info("[MIX] message assembled", "item", it.ID.String(), "fragments", len(parts), "size", it.Size)
	n.eng.Run(it)
	return nil
}

// Fragments returns the number of incomplete messages held at this exit.
func (n *Node) Fragments() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.fragments)
}
