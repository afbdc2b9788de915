package pluginclient

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
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
	pending map[uint64]*pending
	err     error
}

// pending is a call sent and not answered yet. ch gets the reply (nil
// once the caller gave up); release, if set, frees what the call lends
// the plugin until its reply (a body region slot), or, when held, until
// the caller has read the reply (its reply region slot).
type pending struct {
	ch      chan *pb.Reply
	release func()
	held    bool
}

// errBatcherClosed ends the stream when the plugin is stopped.
var errBatcherClosed = errors.New("pluginclient: plugin stopped")

func newBatcher(rpc pb.StageClient) (*batcher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := rpc.Calls(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	b := &batcher{stream: stream, cancel: cancel, sendq: make(chan *pb.Call, wire.MaxBatchCalls),
		dead: make(chan struct{}), pending: map[uint64]*pending{}}
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
	// The slots of calls sent and not answered stay lent: the stream
	// ending does not mean the plugin stopped reading them (a closed stage
	// instance's process lives on for its other instances, which would
	// get the slot and overwrite a body the plugin is still delivering).
	// They come back with the region, when the process is gone.
	for id, p := range b.pending {
		if p.ch != nil {
			close(p.ch)
		}
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
		for len(batch.Calls) < wire.MaxBatchCalls && size < wire.MaxBatchBytes {
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
			p := b.pending[r.GetId()]
			if p == nil {
				continue
			}
			// Freed before the caller wakes: a caller that returned
			// finds its slot free again. A held slot is the waiting
			// caller's to free.
			if p.release != nil && (!p.held || p.ch == nil) {
				p.release()
			}
			if p.ch != nil {
				p.ch <- r
			}
			delete(b.pending, r.GetId())
		}
		b.mu.Unlock()
	}
}

// do sends call c and waits for its reply. release, if not nil, is called
// once the plugin is done with the call (its reply came, or the stream
// broke), even after the caller gave up. Errors: the stream broke or ctx
// ended (as a *TransportError, like a failed framed call); on ctx the
// plugin is told to cancel the call.
func (b *batcher) do(ctx context.Context, c *pb.Call, release func()) (*pb.Reply, error) {
	return b.call(ctx, c, release, false)
}

// doHeld is do for a call whose reply refers to what release frees (the
// reply region slot of a Mix call): when it returns a reply, the caller
// calls release once it has read the reply; on an error release was
// called or will be, as for do.
func (b *batcher) doHeld(ctx context.Context, c *pb.Call, release func()) (*pb.Reply, error) {
	return b.call(ctx, c, release, release != nil)
}

func (b *batcher) call(ctx context.Context, c *pb.Call, release func(), held bool) (*pb.Reply, error) {
	p := &pending{ch: make(chan *pb.Reply, 1), release: release, held: held}
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		if release != nil {
			release()
		}
		return nil, transport(err)
	}
	b.next++
	c.Id = b.next
	b.pending[c.Id] = p
	b.mu.Unlock()
	select {
	case b.sendq <- c:
	case <-b.dead:
		// Not sent: the plugin never sees it.
		if release != nil {
			release()
		}
		return nil, transport(b.broken())
	case <-ctx.Done():
		// Not sent: the plugin never sees it.
		b.mu.Lock()
		delete(b.pending, c.Id)
		b.mu.Unlock()
		if release != nil {
			release()
		}
		return nil, transport(ctx.Err())
	}
	select {
	case r, ok := <-p.ch:
		if !ok {
			return nil, transport(b.broken())
		}
		return r, nil
	case <-ctx.Done():
		b.mu.Lock()
		waiting := b.pending[c.Id] == p
		if waiting {
			p.ch = nil // the reply still releases the slot
		}
		b.mu.Unlock()
		if waiting {
			select {
			case b.sendq <- &pb.Call{Id: c.Id, Op: wire.OpCancel}:
			default: // the queue is full: the call runs to its end
			}
		} else if held {
			// The reply came meanwhile, its slot held for this caller (or
			// the stream broke: then the slot stays lent, see fail).
			if r, ok := <-p.ch; ok && r != nil {
				release()
			}
		}
		return nil, transport(ctx.Err())
	}
}

func (b *batcher) broken() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
