package sdk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
)

// maxReplyBytes is the largest single reply sent inside a batch; a larger
// one (a router's many packets) is redone as a framed call.
const maxReplyBytes = wire.MaxCallBytes / 2

// Calls serves the batched call stream: each call runs in its own
// goroutine (a stage must be safe for concurrent use); replies are sent in
// batches of whatever is ready. It returns when the host closes its side
// and every call has replied, or when the stream breaks.
func (s *stageServer[C]) Calls(stream pb.Stage_CallsServer) error {
	ctx := stream.Context()
	out := make(chan *pb.Reply, wire.MaxBatchCalls)
	sendErr := make(chan error, 1)
	go func() { sendErr <- sendReplies(stream, out) }()

	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		cancels = map[uint64]context.CancelFunc{}
	)
	var recvErr error
	for {
		cb, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				recvErr = err
			}
			break
		}
		for _, c := range cb.GetCalls() {
			if c.GetOp() == wire.OpCancel {
				mu.Lock()
				if cancel := cancels[c.GetId()]; cancel != nil {
					cancel()
				}
				mu.Unlock()
				continue
			}
			cctx, cancel := context.WithCancel(ctx)
			mu.Lock()
			cancels[c.GetId()] = cancel
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.run(cctx, c)
				mu.Lock()
				delete(cancels, c.GetId())
				mu.Unlock()
				cancel()
				r.Id = c.GetId()
				out <- r
			}()
		}
	}
	wg.Wait()
	close(out)
	if err := <-sendErr; err != nil {
		return err
	}
	return recvErr
}

// sendReplies sends the replies from out in batches until out is closed.
// After a send error it keeps draining out so no call blocks on it.
func sendReplies(stream pb.Stage_CallsServer, out <-chan *pb.Reply) error {
	var err error
	for r := range out {
		batch := &pb.ReplyBatch{Replies: []*pb.Reply{r}}
		size := replySize(r)
	more:
		for len(batch.Replies) < wire.MaxBatchCalls && size < wire.MaxBatchBytes {
			select {
			case r, ok := <-out:
				if !ok {
					break more
				}
				batch.Replies = append(batch.Replies, r)
				size += replySize(r)
			default:
				break more
			}
		}
		if err == nil {
			err = stream.Send(batch)
		}
	}
	return err
}

func replySize(r *pb.Reply) int {
	n := len(r.GetHeader()) + len(r.GetBody())
	for _, rt := range r.GetRoutes() {
		n += len(rt.GetBody())
	}
	return n + len(r.GetMix().GetPacket()) + len(r.GetMix().GetFragmentData())
}

// inlineMessage is the stage's view of a batched call's message, its body
// from the call or from the body region. A stage that declared
// NeedBodyStream gets the body through OpenBody as on a framed call
// (readable once, until the stage returns: a region slot is read in
// place); any other gets its own copy. Errors: a bad region slot.
func (s *stageServer[C]) inlineMessage(c *pb.Call, stream bool) (*Message, error) {
	meta := c.GetMeta()
	h, b := c.GetHeader(), c.GetBody()
	if meta.GetHeaderPresent() && h == nil {
		h = []byte{}
	}
	if slot := c.GetBodySlot(); slot != 0 && meta.GetBodyPresent() {
		rb, err := regionBody(slot, meta.GetBodyLen())
		if err != nil {
			return nil, err
		}
		// The stage may keep or change its Body: it gets a copy (Clone
		// skips zeroing what it copies over). A stream is read in place.
		if b = rb; !stream {
			b = bytes.Clone(rb)
		}
	}
	if meta.GetBodyPresent() && b == nil {
		b = []byte{}
	}
	if !meta.GetBodyPresent() {
		b = nil
	}
	if !stream || b == nil {
		return messageFromPB(meta, h, b), nil
	}
	m := messageFromPB(meta, h, nil)
	m.BodyLen = int64(len(b))
	var opened atomic.Bool
	m.OpenBody = func() (io.Reader, error) {
		if opened.Swap(true) {
			return nil, errors.New("sdk: the body stream was already opened (it can be read once)")
		}
		return bytes.NewReader(b), nil
	}
	return m, nil
}

// run performs one batched call and returns its reply (id unset).
func (s *stageServer[C]) run(ctx context.Context, c *pb.Call) *pb.Reply {
	streamBody := s.p.Needs&NeedBodyStream != 0
	switch c.GetOp() {
	case wire.OpCheck:
		ck, err := stageAs[Checker](s, KindChecker)
		var m *Message
		if err == nil {
			m, err = s.inlineMessage(c, streamBody)
		}
		if err == nil {
			err = ck.Check(ctx, m)
		}
		return &pb.Reply{Status: statusToPB(err)}
	case wire.OpTransform:
		t, err := stageAs[Transformer](s, KindTransformer)
		var m *Message
		var ch *Change
		if err == nil {
			m, err = s.inlineMessage(c, false)
		}
		if err == nil {
			ch, err = t.Transform(ctx, m)
		}
		if err != nil {
			return &pb.Reply{Status: statusToPB(err)}
		}
		meta := changeToPB(c.GetMeta().GetId(), ch)
		r := &pb.Reply{Status: &pb.Status{}, Meta: meta}
		if ch != nil {
			r.Header, r.Body = ch.Header, ch.Body
		}
		return perCallIfLarge(r)
	case wire.OpRoute:
		rt, err := stageAs[Router](s, KindRouter)
		var m *Message
		var routes []Route
		if err == nil {
			m, err = s.inlineMessage(c, false)
		}
		if err == nil {
			routes, err = rt.Route(ctx, m)
		}
		if err != nil {
			return &pb.Reply{Status: statusToPB(err)}
		}
		r := &pb.Reply{Status: &pb.Status{}}
		for _, x := range routes {
			r.Routes = append(r.Routes, &pb.RouteReply{Route: routeMetaToPB(x), Body: x.Body})
		}
		return perCallIfLarge(r)
	case wire.OpDelay:
		dr, _ := s.Delay(ctx, c.GetDelay())
		return &pb.Reply{Status: dr.GetStatus(), DelaysNs: dr.GetDelaysNs()}
	case wire.OpDeliver:
		d, err := stageAs[Deliverer](s, KindDeliverer)
		var m *Message
		var res []RcptResult
		if err == nil {
			m, err = s.inlineMessage(c, streamBody)
		}
		if err == nil {
			res, err = d.Deliver(ctx, m)
		}
		r := &pb.Reply{Status: statusToPB(err)}
		for _, x := range res {
			r.Results = append(r.Results, &pb.RcptResult{Rcpt: x.Rcpt, Status: statusToPB(x.Err), Relay: x.Relay})
		}
		return r
	case wire.OpMix:
		return s.runMix(ctx, c)
	}
	return &pb.Reply{Status: statusToPB(Permanent(554, "3.5", "unknown call op %d", c.GetOp()))}
}

// runMix performs a Mix call. The mixer reads the packet where it is (the
// body region is read-only: see Mixer.Mix), or a MixerInPlace unwraps a
// copy in the call's reply region slot; a forward packet or exit fragment
// that fits is written to (or already is in) that slot, so that it does
// not cross gRPC either.
func (s *stageServer[C]) runMix(ctx context.Context, c *pb.Call) *pb.Reply {
	mx, err := stageAs[Mixer](s, KindMixer)
	packet := c.GetBody()
	if err == nil && c.GetBodySlot() != 0 {
		packet, err = regionBody(c.GetBodySlot(), c.GetMeta().GetBodyLen())
	}
	dst := replySlot(c.GetBodySlot())
	var res *MixResult
	if ip, ok := mx.(MixerInPlace); err == nil && ok && dst != nil && len(packet) <= len(dst) {
		n := copy(dst, packet)
		res, err = ip.MixInPlace(ctx, dst[:n:n])
	} else if err == nil {
		res, err = mx.Mix(ctx, packet)
	}
	if err != nil {
		return &pb.Reply{Status: statusToPB(err)}
	}
	out := &pb.MixReply{Action: int32(res.Action), ReplayTag: res.ReplayTag[:], Epoch: res.Epoch}
	if res.NextHop != (NodeID{}) {
		out.NextHop = res.NextHop[:]
	}
	if f := res.Fragment; f != nil {
		out.FragmentMessageId, out.FragmentIndex, out.FragmentCount = f.MessageID[:], int32(f.Index), int32(f.Count)
		out.FragmentData = f.Data
	}
	if res.LoopID != ([16]byte{}) {
		out.LoopId = res.LoopID[:]
	}
	// The large part: the forward packet, else the fragment's data (the
	// host reads the slot as the one its Action has).
	data := &out.FragmentData
	if res.Action == MixForward {
		out.Packet, data = res.Packet, &out.Packet
	}
	r := &pb.Reply{Status: &pb.Status{}, Mix: out}
	if d := *data; dst != nil && len(d) > 0 && len(d) <= len(dst) {
		if &d[0] != &dst[0] { // unwrapped in place: already there
			copy(dst, d)
		}
		r.DataSlot, r.DataLen = c.GetBodySlot(), int64(len(d))
		*data = nil
	}
	return r
}

// perCallIfLarge replaces a reply too large for a batch by the status that
// makes the host repeat the call as a framed call (a transformer or router
// is deterministic enough to run twice: see Transformer).
func perCallIfLarge(r *pb.Reply) *pb.Reply {
	if replySize(r) > maxReplyBytes || proto.Size(r) > maxReplyBytes {
		return &pb.Reply{Status: &pb.Status{Kind: wire.StatusPerCall}}
	}
	return r
}

// changeToPB is a Transform reply's meta for change ch (nil: unchanged).
func changeToPB(id string, ch *Change) *pb.MessageMeta {
	out := &pb.MessageMeta{Id: id}
	if ch == nil {
		return out
	}
	if ch.MailFrom != nil {
		out.EnvelopeChanged = true
		out.Envelope = &pb.Envelope{MailFrom: *ch.MailFrom}
	}
	if ch.Header != nil {
		out.HeaderPresent, out.HeaderLen = true, int64(len(ch.Header))
	}
	if ch.Body != nil {
		out.BodyPresent, out.BodyLen = true, int64(len(ch.Body))
	}
	return out
}

// routeMetaToPB is the wire form of a route without its body.
func routeMetaToPB(rt Route) *pb.RouteMeta {
	rm := &pb.RouteMeta{RcptTo: rt.RcptTo, Deliverer: rt.Deliverer}
	if rt.NextHop != (NodeID{}) {
		rm.NextHop = rt.NextHop[:]
	}
	if rt.Body != nil {
		rm.BodyPresent, rm.BodyLen = true, int64(len(rt.Body))
	}
	return rm
}
