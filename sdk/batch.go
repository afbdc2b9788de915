package sdk

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/mixmta/mixmta/sdk/internal/pb"
)

// batcher is the host side of the Calls stream: callers queue calls, one
// goroutine sends whatever is queued as one CallBatch, another matches
// the replies to their callers by id.
type batcher struct {
	stream pb.Stage_CallsClient
	cancel context.CancelFunc
	sendq  chan *pb.Call
	dead   chan struct{} // closed when the stream broke

	// callsSent and batchesSent count what went out (tests read them).
	callsSent, batchesSent atomic.Int64

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *pb.Reply
	err     error
}

// errBatcherClosed ends the stream when the plugin is stopped.
var errBatcherClosed = errors.New("sdk: plugin stopped")

func newBatcher(rpc pb.StageClient) (*batcher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := rpc.Calls(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	b := &batcher{stream: stream, cancel: cancel, sendq: make(chan *pb.Call, maxBatchCalls),
		dead: make(chan struct{}), pending: map[uint64]chan *pb.Reply{}}
	go b.sendLoop()
	go b.recvLoop()
	return b, nil
}

// fail marks the stream broken: every pending and later call fails with
// err as a *TransportError (the plugin crashed or was stopped).
func (b *batcher) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return
	}
	b.err = err
	close(b.dead)
	for id, ch := range b.pending {
		close(ch)
		delete(b.pending, id)
	}
	b.cancel()
}

func (b *batcher) close() { b.fail(errBatcherClosed) }

func (b *batcher) sendLoop() {
	for {
		var c *pb.Call
		select {
		case c = <-b.sendq:
		case <-b.dead:
			return
		}
		batch := &pb.CallBatch{Calls: []*pb.Call{c}}
		size := len(c.GetHeader()) + len(c.GetBody())
	more:
		for len(batch.Calls) < maxBatchCalls && size < maxBatchBytes {
			select {
			case c = <-b.sendq:
				batch.Calls = append(batch.Calls, c)
				size += len(c.GetHeader()) + len(c.GetBody())
			default:
				break more
			}
		}
		if err := b.stream.Send(batch); err != nil {
			b.fail(err)
			return
		}
		b.callsSent.Add(int64(len(batch.Calls)))
		b.batchesSent.Add(1)
	}
}

func (b *batcher) recvLoop() {
	for {
		rb, err := b.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			b.fail(err)
			return
		}
		b.mu.Lock()
		for _, r := range rb.GetReplies() {
			if ch := b.pending[r.GetId()]; ch != nil {
				ch <- r
				delete(b.pending, r.GetId())
			}
		}
		b.mu.Unlock()
	}
}

// do sends call c and waits for its reply. Errors: the stream broke or
// ctx ended (as a *TransportError, like a failed framed call); on ctx the
// plugin is told to cancel the call.
func (b *batcher) do(ctx context.Context, c *pb.Call) (*pb.Reply, error) {
	ch := make(chan *pb.Reply, 1)
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return nil, transport(err)
	}
	b.next++
	c.Id = b.next
	b.pending[c.Id] = ch
	b.mu.Unlock()
	select {
	case b.sendq <- c:
	case <-b.dead:
	case <-ctx.Done():
		b.forget(c.Id)
		return nil, transport(ctx.Err())
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, transport(b.broken())
		}
		return r, nil
	case <-ctx.Done():
		if b.forget(c.Id) {
			select {
			case b.sendq <- &pb.Call{Id: c.Id, Op: opCancel}:
			default: // the queue is full: the call runs to its end
			}
		}
		return nil, transport(ctx.Err())
	}
}

// forget drops a pending call; false if its reply already came.
func (b *batcher) forget(id uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.pending[id]
	delete(b.pending, id)
	return ok
}

func (b *batcher) broken() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
