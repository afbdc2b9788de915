package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// node is one test identity.
type node struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	id   sdk.NodeID
}

func newNode(t testing.TB) node {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return node{priv: priv, pub: pub, id: nodeID(pub)}
}

func (n node) peer(addr string) Peer { return Peer{ID: n.id, Address: addr, Identity: n.pub} }

// lookupOf knows exactly the given nodes (a nodes file).
func lookupOf(nodes ...node) func(ed25519.PublicKey) (sdk.NodeID, bool) {
	m := map[string]sdk.NodeID{}
	for _, n := range nodes {
		m[string(n.pub)] = n.id
	}
	return func(k ed25519.PublicKey) (sdk.NodeID, bool) {
		id, ok := m[string(k)]
		return id, ok
	}
}

// newTransport makes n's transport knowing `known`, closed at the end of t.
func newTransport(t testing.TB, n node, cfg Config, known ...node) *Direct {
	t.Helper()
	cfg.Identity = n.priv
	if cfg.Lookup == nil {
		cfg.Lookup = lookupOf(known...)
	}
	tr, err := NewDirect(cfg)
	if err != nil {
		t.Fatalf("NewDirect: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func listen(t testing.TB, tr *Direct, h Handler) Listener {
	t.Helper()
	l, err := tr.Listen("127.0.0.1:0", h)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func packet(size int, n uint64) []byte {
	p := make([]byte, size)
	rand.Read(p)
	if size >= 8 {
		binary.BigEndian.PutUint64(p, n)
	}
	return p
}

// frameRecorder is a FrameLog that keeps every call.
type frameRecorder struct {
	mu     sync.Mutex
	events []frameEvent
}

type frameEvent struct {
	dir  Dir
	peer sdk.NodeID
	size int
}

func (r *frameRecorder) log(d Dir, peer sdk.NodeID, size int) {
	r.mu.Lock()
	r.events = append(r.events, frameEvent{d, peer, size})
	r.mu.Unlock()
}

func (r *frameRecorder) get() []frameEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]frameEvent(nil), r.events...)
}

// waitFor polls cond for up to d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wait blocks a handler until release is closed or the listener closes,
// so a failing test never hangs in Listener.Close.
func wait(ctx context.Context, release <-chan struct{}) error {
	select {
	case <-release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// countingHandler counts calls and returns nil.
func countingHandler(n *atomic.Int64) Handler {
	return func(context.Context, sdk.NodeID, []byte) error { n.Add(1); return nil }
}

// rawTLS opens an authenticated connection to a listener with tr's
// identity, bypassing the link (to misbehave), and reads the ready word.
func rawTLS(t testing.TB, tr *Direct, addr string, server ed25519.PublicKey) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, tr.clientTLS(server))
	if err != nil {
		t.Fatalf("raw TLS dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	var w [AckSize]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, w[:]); err != nil {
		t.Fatalf("raw TLS: ready word: %v", err)
	}
	if got := binary.BigEndian.Uint64(w[:]); got != readyWord {
		t.Fatalf("raw TLS: first word %#x, want ready %#x", got, readyWord)
	}
	return c
}

// closedWithin reports whether the server ends c within d (a read returns
// an error other than a timeout).
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return false
		}
		return true
	}
}

// recConn records the bytes written to and read from a TCP connection,
// beneath TLS: what an observer of the link sees.
type recConn struct {
	net.Conn
	mu      sync.Mutex
	out, in []byte
}

func (c *recConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.out = append(c.out, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.in = append(c.in, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *recConn) lens() (out, in int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.out), len(c.in)
}

func (c *recConn) bytes() (out, in []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.out...), append([]byte(nil), c.in...)
}

// recDialer is a Config.Dialer that records every connection.
type recDialer struct {
	mu    sync.Mutex
	conns []*recConn
}

func (d *recDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	rc := &recConn{Conn: c}
	d.mu.Lock()
	d.conns = append(d.conns, rc)
	d.mu.Unlock()
	return rc, nil
}

// tlsRecord is one TLS record header: content type and length.
type tlsRecord struct {
	typ byte
	n   int
}

// parseRecords splits a byte stream into TLS records (RFC 8446 §5.1).
func parseRecords(t testing.TB, b []byte) []tlsRecord {
	t.Helper()
	var rs []tlsRecord
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("stream ends inside a record header (%d bytes left)", len(b))
		}
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+n {
			t.Fatalf("stream ends inside a record (%d of %d bytes)", len(b)-5, n)
		}
		rs = append(rs, tlsRecord{b[0], n})
		b = b[5+n:]
	}
	return rs
}
