package transport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

const (
	readyWord     = ^uint64(0)
	readyFullWord = ^uint64(1)
	nackBit       = uint64(1) << 63
	fullBit       = uint64(1) << 62
)

// Direct is the transport over TCP (or any stream Config.Dialer opens) with
// mutual TLS 1.3 pinned to Ed25519 identity keys. Safe for concurrent use.
type Direct struct {
	cfg  Config
	cert tls.Certificate
	cn   string
	st   counters
	bufs sync.Pool // []byte of PacketSize, for received frames

	mu        sync.Mutex
	closed    bool
	links     map[sdk.NodeID]*link
	listeners map[*listener]struct{}

	done chan struct{}
	wg   sync.WaitGroup
}

var _ Transport = (*Direct)(nil)

// NewDirect makes the direct transport of the node whose identity key is
// cfg.Identity. Errors: an invalid Config. Close it when done.
func NewDirect(cfg Config) (*Direct, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cn := linkCN(cfg.PacketSize)
	cert, err := selfSigned(cfg.Identity, cn)
	if err != nil {
		return nil, err
	}
	t := &Direct{cfg: cfg, cert: cert, cn: cn, links: map[sdk.NodeID]*link{}, listeners: map[*listener]struct{}{}, done: make(chan struct{})}
	size := cfg.PacketSize
	t.bufs.New = func() any { b := make([]byte, size); return &b }
	t.wg.Add(1)
	go t.janitor()
	return t, nil
}

// Dial implements Transport.
func (t *Direct) Dial(ctx context.Context, peer Peer) (Link, error) {
	if err := peer.validate(); err != nil {
		return nil, err
	}
	l, err := t.link(peer)
	if err != nil {
		return nil, err
	}
	c, err := l.acquire(ctx)
	if err != nil {
		return nil, err
	}
	l.release(c)
	return l, nil
}

// Probe implements Transport.
func (t *Direct) Probe(ctx context.Context, peer Peer) error {
	_, err := t.ProbeFull(ctx, peer)
	return err
}

// ProbeFull implements Transport.
func (t *Direct) ProbeFull(ctx context.Context, peer Peer) (bool, error) {
	if err := peer.validate(); err != nil {
		return false, err
	}
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return false, ErrClosed
	}
	c, err := t.dialConn(ctx, peer)
	if err != nil {
		return false, err
	}
	t.st.probes.Add(1)
	c.fail(ErrClosed)
	return c.peerFull, nil
}

// Close implements Transport.
func (t *Direct) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	links := t.links
	t.links = map[sdk.NodeID]*link{}
	ls := make([]*listener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	close(t.done)
	for _, l := range links {
		l.close()
	}
	for _, l := range ls {
		l.Close()
	}
	t.wg.Wait()
	return nil
}

// link returns the cached link of peer.ID, making it or pointing it at a
// changed address or key.
func (t *Direct) link(peer Peer) (*link, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	l := t.links[peer.ID]
	if l == nil {
		l = &link{t: t, peer: peer, window: make(chan struct{}, t.cfg.Window)}
		t.links[peer.ID] = l
		return l, nil
	}
	l.mu.Lock()
	var old *clientConn
	if !l.peer.equal(peer) {
		l.peer = peer
		l.backoff, l.nextDial = 0, time.Time{}
		old, l.c = l.c, nil
	}
	l.mu.Unlock()
	if old != nil {
		// Sends in flight on it fail; later ones dial the new address.
		go old.fail(fmt.Errorf("%w: peer changed address or key", ErrClosed))
	}
	return l, nil
}

// janitor closes dialled connections idle for IdleTimeout.
func (t *Direct) janitor() {
	defer t.wg.Done()
	tick := min(max(t.cfg.IdleTimeout/4, 10*time.Millisecond), 15*time.Second)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case <-t.done:
			return
		case now := <-tk.C:
			t.mu.Lock()
			links := make([]*link, 0, len(t.links))
			for _, l := range t.links {
				links = append(links, l)
			}
			t.mu.Unlock()
			for _, l := range links {
				l.closeIdle(now)
			}
		}
	}
}

// dialConn opens, authenticates and readies one connection to peer.
func (t *Direct) dialConn(ctx context.Context, peer Peer) (*clientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	fail := func(err error) (*clientConn, error) {
		t.st.dialErrors.Add(1)
		if isTimeout(err) {
			t.st.timeouts.Add(1)
		}
		return nil, fmt.Errorf("transport: dial %s: %w", peer.ID.Short(), err)
	}
	raw, err := t.cfg.Dialer.DialContext(ctx, "tcp", peer.Address)
	if err != nil {
		return fail(err)
	}
	tc := tls.Client(raw, t.clientTLS(peer.Identity))
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		switch {
		case errors.Is(err, ErrIdentity):
			t.st.wrongIdentity.Add(1)
			t.cfg.Logger.Warn("[MIX] peer presented another identity key than the nodes file says; link refused", "peer", peer.ID.Short())
		case errors.Is(err, ErrProtocol):
			t.st.protocolErrors.Add(1)
		}
		return fail(err)
	}
	// TLS 1.3: the client finishes before the server has checked its
	// certificate. The ready word says the listener accepted us.
	if dl, ok := ctx.Deadline(); ok {
		tc.SetReadDeadline(dl)
	}
	var w [AckSize]byte
	if _, err := io.ReadFull(tc, w[:]); err != nil {
		tc.Close()
		if isTimeout(err) || ctx.Err() != nil {
			return fail(err)
		}
		return fail(fmt.Errorf("%w (it may not know our identity key): %v", ErrPeerRefused, err))
	}
	t.frameLog(AckIn, peer.ID, AckSize)
	t.st.bytesReceived.Add(AckSize)
	ready := binary.BigEndian.Uint64(w[:])
	if ready != readyWord && ready != readyFullWord {
		tc.Close()
		t.st.protocolErrors.Add(1)
		return fail(fmt.Errorf("%w: first word is not ready", ErrProtocol))
	}
	tc.SetReadDeadline(time.Time{})
	c := &clientConn{t: t, peer: peer, tc: tc, raw: raw, pending: map[uint64]chan error{}, dead: make(chan struct{}), lastUsed: time.Now(),
		peerFull: ready == readyFullWord}
	t.st.connsOut.Add(1)
	go c.readAcks()
	return c, nil
}

func (t *Direct) frameLog(d Dir, peer sdk.NodeID, size int) {
	if t.cfg.FrameLog != nil {
		t.cfg.FrameLog(d, peer, size)
	}
}

// link is the cached way to one peer: at most one connection at a time,
// redialled on demand, with backoff after failed dials.
type link struct {
	t      *Direct
	window chan struct{} // one token per frame in flight

	mu       sync.Mutex
	peer     Peer
	c        *clientConn   // nil or possibly dead
	dialing  chan struct{} // closed when the dial in progress ends
	nextDial time.Time
	backoff  time.Duration
	lastErr  error
	closed   bool
}

// Peer implements Link.
func (l *link) Peer() Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peer
}

// Send implements Link.
func (l *link) Send(ctx context.Context, packet []byte) error {
	if len(packet) != l.t.cfg.PacketSize {
		l.t.st.wrongSize.Add(1)
		return fmt.Errorf("transport: send: %w: %d bytes, want %d", ErrPacketSize, len(packet), l.t.cfg.PacketSize)
	}
	select {
	case l.window <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-l.window }()
	c, err := l.acquire(ctx)
	if err != nil {
		return err
	}
	defer l.release(c)
	if err := c.send(ctx, packet); err != nil {
		return fmt.Errorf("transport: send to %s: %w", c.peer.ID.Short(), err)
	}
	return nil
}

// acquire returns a live connection, dialling if needed, and counts the
// caller in flight (release undoes it).
func (l *link) acquire(ctx context.Context) (*clientConn, error) {
	for {
		l.mu.Lock()
		switch {
		case l.closed:
			l.mu.Unlock()
			return nil, ErrClosed
		case l.c != nil && !l.c.isDead():
			c := l.c
			c.inflight++
			c.lastUsed = time.Now()
			l.mu.Unlock()
			return c, nil
		case l.dialing != nil:
			ch := l.dialing
			l.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case time.Now().Before(l.nextDial):
			err := fmt.Errorf("transport: %s: %w (%v left): %v", l.peer.ID.Short(), ErrBackoff, time.Until(l.nextDial).Round(time.Millisecond), l.lastErr)
			l.mu.Unlock()
			return nil, err
		}
		l.c = nil
		ch := make(chan struct{})
		l.dialing = ch
		peer := l.peer
		l.mu.Unlock()

		c, err := l.t.dialConn(ctx, peer)

		l.mu.Lock()
		l.dialing = nil
		close(ch)
		switch {
		case err != nil && ctx.Err() != nil:
			// The caller gave up; not the peer's fault.
			l.mu.Unlock()
			return nil, err
		case err != nil:
			l.backoff = min(max(l.backoff*2, l.t.cfg.BackoffMin), l.t.cfg.BackoffMax)
			l.nextDial = time.Now().Add(l.backoff)
			l.lastErr = err
			l.mu.Unlock()
			return nil, err
		case l.closed || !l.peer.equal(peer):
			go c.fail(ErrClosed)
		default:
			l.backoff, l.nextDial, l.lastErr = 0, time.Time{}, nil
			l.c = c
			l.t.st.dials.Add(1)
			l.t.cfg.Logger.Debug("[MIX] link up", "peer", peer.ID.Short())
		}
		l.mu.Unlock()
	}
}

func (l *link) release(c *clientConn) {
	l.mu.Lock()
	c.inflight--
	c.lastUsed = time.Now()
	l.mu.Unlock()
}

// closeIdle and close never call fail under l.mu: a graceful TLS close
// may wait seconds for a peer that does not read.
func (l *link) closeIdle(now time.Time) {
	l.mu.Lock()
	c := l.c
	if c == nil || c.inflight != 0 || now.Sub(c.lastUsed) < l.t.cfg.IdleTimeout {
		l.mu.Unlock()
		return
	}
	l.c = nil
	l.mu.Unlock()
	c.fail(fmt.Errorf("%w: idle", ErrClosed))
	l.t.cfg.Logger.Debug("[MIX] idle link closed", "peer", c.peer.ID.Short())
}

func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		c.fail(ErrClosed)
	}
}

// clientConn is one dialled TLS connection: frames out, words in.
type clientConn struct {
	t    *Direct
	peer Peer
	tc   *tls.Conn
	raw  net.Conn
	// peerFull: the ready word said the peer was full.
	peerFull bool

	wmu  sync.Mutex    // one frame written at a time
	next atomic.Uint64 // sequence number of the next frame

	pmu     sync.Mutex
	pending map[uint64]chan error // frames written, not yet answered

	once sync.Once
	dead chan struct{}
	err  error // set before dead is closed

	inflight int       // guarded by link.mu
	lastUsed time.Time // guarded by link.mu
}

func (c *clientConn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// send writes one frame and waits for its ack.
func (c *clientConn) send(ctx context.Context, packet []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ch := make(chan error, 1)
	c.wmu.Lock()
	// fail closes dead before it drains pending under pmu: either we see
	// dead here or fail answers ch.
	c.pmu.Lock()
	if c.isDead() {
		c.pmu.Unlock()
		c.wmu.Unlock()
		return c.err
	}
	seq := c.next.Load()
	c.pending[seq] = ch
	c.pmu.Unlock()
	c.next.Store(seq + 1)
	c.tc.SetWriteDeadline(time.Now().Add(c.t.cfg.WriteTimeout))
	n, err := c.tc.Write(packet)
	c.wmu.Unlock()
	if err != nil {
		// A partial frame would shift every later one: the connection
		// cannot go on. fail answers ch.
		c.fail(fmt.Errorf("write: %w", err))
		return <-ch
	}
	c.t.st.framesSent.Add(1)
	c.t.st.bytesSent.Add(uint64(n))
	c.t.frameLog(FrameOut, c.peer.ID, n)

	timer := time.NewTimer(c.t.cfg.AckTimeout)
	defer timer.Stop()
	select {
	case err := <-ch:
		return err
	case <-timer.C:
		c.t.st.timeouts.Add(1)
		c.fail(ErrAckTimeout)
		return <-ch
	case <-ctx.Done():
		c.pmu.Lock()
		delete(c.pending, seq)
		c.pmu.Unlock()
		select {
		case err := <-ch:
			return err
		default:
			return ctx.Err()
		}
	}
}

// readAcks answers pending sends until the connection fails.
func (c *clientConn) readAcks() {
	var w [AckSize]byte
	for {
		if _, err := io.ReadFull(c.tc, w[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: peer closed the connection", ErrClosed)
			}
			c.fail(err)
			return
		}
		c.t.st.bytesReceived.Add(AckSize)
		c.t.frameLog(AckIn, c.peer.ID, AckSize)
		word := binary.BigEndian.Uint64(w[:])
		seq := word &^ (nackBit | fullBit)
		if word == readyWord || word&nackBit != 0 && word&fullBit != 0 || seq >= c.next.Load() {
			c.t.st.protocolErrors.Add(1)
			c.fail(fmt.Errorf("%w: unexpected word %#x", ErrProtocol, word))
			return
		}
		c.pmu.Lock()
		ch, ok := c.pending[seq]
		delete(c.pending, seq)
		c.pmu.Unlock()
		if word&nackBit != 0 {
			c.t.st.nacks.Add(1)
			if ok {
				ch <- ErrNack
			}
			continue
		}
		if word&fullBit != 0 {
			c.t.st.fulls.Add(1)
			if ok {
				ch <- ErrFull
			}
			continue
		}
		c.t.st.acks.Add(1)
		if ok {
			ch <- nil
		}
	}
}

// fail closes the connection once and fails every pending send with err.
func (c *clientConn) fail(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.dead)
		if errors.Is(err, ErrClosed) {
			c.tc.Close() // close_notify: the listener sees a clean end
		} else {
			c.raw.Close() // never block on a broken peer
		}
		c.t.st.connsOut.Add(-1)
		if isTimeout(err) && !errors.Is(err, ErrAckTimeout) {
			c.t.st.timeouts.Add(1)
		}
		c.pmu.Lock()
		for seq, ch := range c.pending {
			ch <- err
			delete(c.pending, seq)
		}
		c.pmu.Unlock()
	})
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrAckTimeout)
}
