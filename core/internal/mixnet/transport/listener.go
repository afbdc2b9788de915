package transport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Listen implements Transport. Errors: no Lookup or handler in the
// config, ErrClosed, or the address cannot be listened on.
func (t *Direct) Listen(addr string, h Handler) (Listener, error) {
	if t.cfg.Lookup == nil || h == nil {
		return nil, errors.New("transport: listen needs Config.Lookup and a handler")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{t: t, ln: ln, h: h, ctx: ctx, cancel: cancel, tlsc: t.serverTLS(),
		pending: map[netip.Addr][]*handshake{}, conns: map[*serverConn]struct{}{}}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		ln.Close()
		cancel()
		return nil, ErrClosed
	}
	t.listeners[l] = struct{}{}
	t.mu.Unlock()
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

type listener struct {
	t      *Direct
	ln     net.Listener
	h      Handler
	tlsc   *tls.Config
	ctx    context.Context // handlers' context; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	hsMu     sync.Mutex
	pending  map[netip.Addr][]*handshake // in progress per source, oldest first
	pendingN int

	mu     sync.Mutex
	closed bool
	conns  map[*serverConn]struct{}
}

func (l *listener) Addr() net.Addr { return l.ln.Addr() }

func (l *listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := make([]*serverConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	l.cancel() // first: accept() then knows the error is ours
	err := l.ln.Close()
	for _, c := range conns {
		c.fail(ErrClosed)
	}
	l.wg.Wait()
	l.t.mu.Lock()
	delete(l.t.listeners, l)
	l.t.mu.Unlock()
	return err
}

func (l *listener) accept() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.t.cfg.Logger.Warn("[MIX] accept failed; retrying", "error", err, "in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-l.ctx.Done():
				return
			}
		}
		delay = 0
		hs := l.startHandshake(raw)
		l.wg.Add(1)
		go l.serve(hs)
	}
}

// handshake is an inbound connection not yet authenticated.
type handshake struct {
	net.Conn
	src  netip.Addr
	sent atomic.Bool // the client sent a byte: a handshake, not an idle socket
}

func (h *handshake) Read(b []byte) (int, error) {
	n, err := h.Conn.Read(b)
	if n > 0 {
		h.sent.Store(true)
	}
	return n, err
}

// startHandshake admits raw to the handshakes in progress. At the
// per-source limit it closes one of that source's, at MaxHandshakes one
// of the source holding the most; either way the oldest that has not
// sent a byte, or else the oldest. A full table never refuses the newest
// connection, so sockets that send nothing can never keep a peer out: a
// peer's ClientHello follows its connect at once.
func (l *listener) startHandshake(raw net.Conn) *handshake {
	hs := &handshake{Conn: raw}
	if ta, ok := raw.RemoteAddr().(*net.TCPAddr); ok {
		hs.src, _ = netip.AddrFromSlice(ta.IP)
		hs.src = sourceKey(hs.src.Unmap())
	}
	cfg := l.t.cfg
	l.hsMu.Lock()
	var victims []*handshake
	if q := l.pending[hs.src]; len(q) >= cfg.MaxHandshakesPerSource && !hs.src.IsLoopback() {
		victims = q
	} else if l.pendingN >= cfg.MaxHandshakes {
		for _, q := range l.pending {
			if len(q) > len(victims) {
				victims = q
			}
		}
	}
	var victim *handshake
	if len(victims) > 0 {
		victim = victims[0]
		for _, v := range victims {
			if !v.sent.Load() {
				victim = v
				break
			}
		}
		l.dropPending(victim)
	}
	l.pending[hs.src] = append(l.pending[hs.src], hs)
	l.pendingN++
	l.hsMu.Unlock()
	if victim != nil {
		victim.Close()
		l.t.st.limitDrops.Add(1)
	}
	return hs
}

// sourceKey is the source the handshake limits count: an IPv4 address,
// or the /64 an IPv6 address is in. One host or site is routinely given a
// whole /64 (RFC 6177); counted address by address, it could open
// MaxHandshakesPerSource idle connections from each of them and, every
// source then holding one, make the table evict peers' handshakes as
// readily as its own.
func sourceKey(ip netip.Addr) netip.Addr {
	if ip.Is6() && !ip.IsLoopback() { // ::1 stays exempt, see MaxHandshakesPerSource
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// endHandshake removes hs from the handshakes in progress (a no-op when
// it was closed to make room).
func (l *listener) endHandshake(hs *handshake) {
	l.hsMu.Lock()
	l.dropPending(hs)
	l.hsMu.Unlock()
}

func (l *listener) dropPending(hs *handshake) {
	q := l.pending[hs.src]
	for i, o := range q {
		if o == hs {
			q = append(q[:i:i], q[i+1:]...)
			l.pendingN--
			break
		}
	}
	if len(q) == 0 {
		delete(l.pending, hs.src)
	} else {
		l.pending[hs.src] = q
	}
}

// serve authenticates one connection and reads its frames until it fails.
func (l *listener) serve(hs *handshake) {
	defer l.wg.Done()
	raw := net.Conn(hs)
	tc := tls.Server(raw, l.tlsc)
	ctx, cancel := context.WithTimeout(l.ctx, l.t.cfg.InboundHandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	l.endHandshake(hs)
	var id sdk.NodeID
	if err == nil {
		// Look up again: VerifyConnection cannot hand the id over, and the
		// nodes file may have changed in between.
		pub, kerr := peerKey(tc.ConnectionState(), l.t.cn)
		var ok bool
		if kerr == nil {
			id, ok = l.t.cfg.Lookup(pub)
		}
		if !ok {
			err = ErrUnknownPeer
		}
	}
	if err != nil {
		raw.Close()
		l.t.st.handshakeErrors.Add(1)
		switch {
		case errors.Is(err, ErrUnknownPeer):
			l.t.st.unknownPeers.Add(1)
		case errors.Is(err, ErrProtocol):
			l.t.st.protocolErrors.Add(1)
		case isTimeout(err):
			l.t.st.timeouts.Add(1)
		}
		l.t.cfg.Logger.Debug("[MIX] inbound handshake failed", "error", err)
		return
	}

	c := &serverConn{l: l, id: id, tc: tc, raw: raw, dead: make(chan struct{})}
	c.last.Store(time.Now().UnixNano())
	if !l.register(c) {
		raw.Close()
		l.t.cfg.Logger.Debug("[MIX] inbound link refused: node at its connection limit", "peer", id.Short())
		return
	}
	defer l.unregister(c)
	l.t.st.accepted.Add(1)
	l.t.st.connsIn.Add(1)
	defer l.t.st.connsIn.Add(-1)
	l.t.cfg.Logger.Debug("[MIX] inbound link up", "peer", id.Short())
	ready := readyWord
	if f := l.t.cfg.Full; f != nil && f() {
		ready = readyFullWord
	}
	if err := c.writeWord(ready); err != nil {
		c.fail(err)
		return
	}
	c.run()
}

// register adds c. When its node already has MaxConnsPerPeer connections,
// the least recently active one without handlers running is closed (a
// redial after a half-open connection must win); when all are busy, c is
// refused (a burst of probes never cuts a link carrying frames). False
// when c is refused or the listener is closed.
func (l *listener) register(c *serverConn) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	var victims []*serverConn
	n := 1
	for o := range l.conns {
		if o.id == c.id && !o.isDead() {
			n++
			if o.busy.Load() == 0 {
				victims = append(victims, o)
			}
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].last.Load() < victims[j].last.Load() })
	excess := n - l.t.cfg.MaxConnsPerPeer
	if excess > len(victims) {
		l.mu.Unlock()
		l.t.st.limitDrops.Add(1)
		return false
	}
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	for _, o := range victims[:max(excess, 0)] {
		l.t.st.limitDrops.Add(1)
		o.fail(fmt.Errorf("%w: replaced by a newer connection of the same node", ErrClosed))
	}
	return true
}

func (l *listener) unregister(c *serverConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// serverConn is one accepted connection: frames in, words out.
type serverConn struct {
	l    *listener
	id   sdk.NodeID
	tc   *tls.Conn
	raw  net.Conn
	busy atomic.Int32 // handlers running
	last atomic.Int64 // unix ns of the last frame (or the handshake)

	wmu sync.Mutex // one word written at a time

	once sync.Once
	dead chan struct{}
}

// run reads frames, runs up to Window handlers at once and waits for them
// when the connection ends. Memory: at most Window frame buffers, while
// frames are being handled.
func (c *serverConn) run() {
	t := c.l.t
	size := t.cfg.PacketSize
	slots := make(chan *[]byte, t.cfg.Window)
	for range t.cfg.Window {
		slots <- nil
	}
	var handlers sync.WaitGroup
	defer func() {
		handlers.Wait()
		close(slots)
		for b := range slots {
			if b != nil {
				t.bufs.Put(b)
			}
		}
	}()
	for seq := uint64(0); ; seq++ {
		var buf *[]byte
		select {
		case buf = <-slots:
		case <-c.dead:
			return
		}
		if buf == nil {
			buf = t.bufs.Get().(*[]byte)
		}
		if err := c.readFrame(*buf); err != nil {
			slots <- buf
			c.fail(err)
			return
		}
		t.st.framesReceived.Add(1)
		t.st.bytesReceived.Add(uint64(size))
		t.frameLog(FrameIn, c.id, size)
		c.last.Store(time.Now().UnixNano())
		c.busy.Add(1)
		handlers.Add(1)
		go func(seq uint64, buf *[]byte) {
			defer handlers.Done()
			defer c.busy.Add(-1) // after the ack: an unacked frame keeps c busy
			err := c.l.h(c.l.ctx, c.id, *buf)
			// Back to the shared pool, not kept in the slot: a slot that
			// kept its buffer held up to Window x PacketSize per
			// connection for its lifetime (8 MiB of an idle core's live
			// heap); the pool's buffers go at the next GCs when idle.
			t.bufs.Put(buf)
			slots <- nil
			word := seq
			switch {
			case errors.Is(err, ErrFull):
				word |= fullBit
			case err != nil:
				word |= nackBit
				t.cfg.Logger.Debug("[MIX] handler failed; nack", "peer", c.id.Short(), "error", err)
			}
			if werr := c.writeWord(word); werr != nil {
				c.fail(werr)
				return
			}
			switch {
			case word&fullBit != 0:
				t.st.fullsSent.Add(1)
			case err != nil:
				t.st.nacksSent.Add(1)
			default:
				t.st.acksSent.Add(1)
			}
		}(seq, buf)
	}
}

// readFrame reads exactly one frame: the first byte may take twice
// IdleTimeout (an idle link), the rest FrameTimeout (a stalled one).
func (c *serverConn) readFrame(buf []byte) error {
	t := c.l.t
	c.tc.SetReadDeadline(time.Now().Add(2 * t.cfg.IdleTimeout))
	if _, err := io.ReadFull(c.tc, buf[:1]); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: peer closed the connection", ErrClosed)
		}
		return err
	}
	c.tc.SetReadDeadline(time.Now().Add(t.cfg.FrameTimeout))
	n, err := io.ReadFull(c.tc, buf[1:])
	if err != nil && !isTimeout(err) && !c.isDead() { // not our own close
		t.st.protocolErrors.Add(1)
		return fmt.Errorf("%w: frame cut after %d of %d bytes: %v", ErrProtocol, n+1, len(buf), err)
	}
	return err
}

func (c *serverConn) writeWord(word uint64) error {
	var w [AckSize]byte
	binary.BigEndian.PutUint64(w[:], word)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.tc.SetWriteDeadline(time.Now().Add(c.l.t.cfg.WriteTimeout))
	n, err := c.tc.Write(w[:])
	if err != nil {
		return err
	}
	c.l.t.st.bytesSent.Add(uint64(n))
	c.l.t.frameLog(AckOut, c.id, n)
	return nil
}

func (c *serverConn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

func (c *serverConn) fail(err error) {
	c.once.Do(func() {
		close(c.dead)
		if isTimeout(err) {
			c.l.t.st.timeouts.Add(1)
		}
		if errors.Is(err, ErrClosed) {
			c.tc.Close()
		} else {
			c.raw.Close()
		}
		if !errors.Is(err, ErrClosed) {
			c.l.t.cfg.Logger.Debug("[MIX] inbound link closed", "peer", c.id.Short(), "error", err)
		}
	})
}
