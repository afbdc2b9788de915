// Package transport carries fixed-size mix packets between mixnet nodes
// (docs/mixnet.md, "Transport"): a listener that hands each received packet
// to the core and acknowledges it only once the core has queued it durably,
// and links that send packets to other nodes over TCP with mutual TLS 1.3
// pinned to the nodes' Ed25519 identity keys.
//
// # Wire protocol, version 1
//
// Connection: TLS 1.3 only, no session resumption, no SNI, no ALPN. Each
// side presents a self-signed X.509 certificate whose public key is its
// Ed25519 identity key and whose Subject CN is "mixmta-link/1
// packet-size=N". Chains, names and validity dates are ignored; each side
// checks only the peer's key (the dialer: exactly the key of the node it
// dialled; the listener: a key the caller's Lookup knows, i.e. a node of the
// nodes file) and the CN (the same protocol version and packet size), so a
// node configured with another packet size is refused at the handshake
// instead of mis-framing packets.
//
// A link is one-way: the dialer sends packets, the listener acknowledges.
//
//	dialer -> listener: frames. A frame is exactly PacketSize bytes (default
//	                    65536): one packet, nothing else, no header. The
//	                    n-th frame of a connection, counting from 0, has
//	                    sequence number n.
//	listener -> dialer: words of exactly 8 bytes (AckSize), big-endian:
//	                    0xFFFFFFFFFFFFFFFF  ready: sent once, first, when the
//	                                        listener has accepted the dialer
//	                    0xFFFFFFFFFFFFFFFE  ready, and the node is full now
//	                                        (so a probe learns it)
//	                    n (bit 63 clear)    ack: frame n is durably queued
//	                    n | 1<<63           nack: frame n was not queued; the
//	                                        sender tries again later
//	                    n | 1<<62           full: frame n was not queued
//	                                        because the node is full
//	                                        (flow control, docs/mixnet.md
//	                                        "Flow control"): the sender keeps
//	                                        it and tries again later, and
//	                                        holds nothing against the node
//
// Each frame is written with one Write and each word with another, with TLS
// dynamic record sizing off, so after the handshake every frame becomes the
// same sequence of TLS records (65536 bytes: four records of 16384) and
// every word one record of 8 bytes: an observer of a link sees only equal
// records whatever the packets are (real, cover, loop).
//
// Up to Window frames (default 32) are in flight per link. The listener runs
// the handler of up to Window frames of a connection at once (so the core
// can sync several packets with one commit) and acknowledges each as soon as
// its handler returns: acks may come out of order. Delivery is at least
// once: a Send that fails (nack, broken connection, timeout) may still have
// delivered its packet, and the core sends it again; the next hop drops the
// duplicate by its replay tag.
package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// Sizes and limits of the wire protocol.
const (
	// DefaultPacketSize is the frame size when Config.PacketSize is 0 (64 KiB).
	DefaultPacketSize = 65536
	// MaxPacketSize bounds Config.PacketSize (16 MiB): a receiver holds up to
	// Window buffers of this size per connection.
	MaxPacketSize = 16 << 20
	// DefaultWindow is the number of frames in flight per link when
	// Config.Window is 0.
	DefaultWindow = 32
	// MaxWindow bounds Config.Window.
	MaxWindow = 1024
	// AckSize is the size of every listener -> dialer word (ready, ack, nack).
	AckSize = 8
)

// Transport moves packets between mix nodes. A Tor transport (SOCKS5 to
// onion addresses) implements the same interface.
type Transport interface {
	// Listen accepts links from other nodes on addr (host:port) and calls h
	// for every packet received. Close the Listener to stop.
	Listen(addr string, h Handler) (Listener, error)
	// Dial returns the link to peer, connecting first when it has no live
	// connection. Links are cached per peer.ID: dialling the same node
	// again returns the same link (a changed Address or Identity replaces
	// its connection). Errors: an invalid Peer, ErrClosed, ErrBackoff after
	// a recent failed dial, a network or TLS error, ErrIdentity when the
	// listener presents another key, ErrPeerRefused when it does not accept
	// ours. Every error but an invalid Peer is temporary.
	Dial(ctx context.Context, peer Peer) (Link, error)
	// Probe opens a fresh connection to peer, completes the TLS handshake
	// and the listener's acceptance (the ready word), and closes it: a
	// health check that sends no frame. Errors as for Dial, without
	// ErrBackoff.
	Probe(ctx context.Context, peer Peer) error
	// ProbeFull is Probe that also reports whether the peer's ready word
	// said it is full (Config.Full).
	ProbeFull(ctx context.Context, peer Peer) (full bool, err error)
	// Stats returns the counters since the transport was made.
	Stats() Stats
	// Close closes every link and listener. Sends in flight fail.
	Close() error
}

// Handler receives one packet from node from. It is called concurrently
// (up to Window calls per connection) and must return nil only after the
// packet is durably queued (synced): the ack is sent after it returns. An
// error sends a nack, and an error wrapping ErrFull a full word: the
// sender retries later. The packet slice is reused
// after Handler returns: copy it to keep it. ctx ends when the listener
// closes.
type Handler func(ctx context.Context, from sdk.NodeID, packet []byte) error

// Listener is an open mix listener.
type Listener interface {
	// Addr is the address listened on (useful with port 0).
	Addr() net.Addr
	// Close stops accepting, closes every connection and waits for running
	// handlers to return.
	Close() error
}

// Link sends packets to one peer. It is safe for concurrent use; call Send
// from several goroutines to keep up to Window frames in flight.
type Link interface {
	// Peer is the node this link goes to.
	Peer() Peer
	// Send writes packet (exactly PacketSize bytes) as one frame and
	// returns nil only after the peer acknowledged that it queued it
	// durably. It waits for a free window slot and (re)connects when the
	// connection is down. Errors: ErrPacketSize (nothing is sent), ErrNack
	// (the peer could not queue it), ErrFull (the peer is full and did
	// not queue it: not a failure of the peer), ErrAckTimeout, ErrBackoff, ErrClosed,
	// ctx's error, or a network or TLS error. After an error the packet may
	// or may not have been delivered: send it again later.
	Send(ctx context.Context, packet []byte) error
}

// Peer is another mix node as the nodes file describes it.
type Peer struct {
	// ID is SHA-256 of Identity (docs/mixnet.md, "Identities and keys").
	ID sdk.NodeID
	// Address is the node's mix address, host:port.
	Address string
	// Identity is the node's 32-byte Ed25519 identity public key: the only
	// key the link accepts from the listener at Address.
	Identity ed25519.PublicKey
}

func (p Peer) validate() error {
	if len(p.Identity) != ed25519.PublicKeySize {
		return fmt.Errorf("transport: peer %s: identity key has %d bytes, want %d", p.ID.Short(), len(p.Identity), ed25519.PublicKeySize)
	}
	if nodeID(p.Identity) != p.ID {
		return fmt.Errorf("transport: peer %s: id is not SHA-256 of its identity key", p.ID.Short())
	}
	if p.Address == "" {
		return fmt.Errorf("transport: peer %s: no address", p.ID.Short())
	}
	return nil
}

func (p Peer) equal(q Peer) bool {
	return p.ID == q.ID && p.Address == q.Address && p.Identity.Equal(q.Identity)
}

func nodeID(pub ed25519.PublicKey) sdk.NodeID { return sha256.Sum256(pub) }

// Errors callers may test with errors.Is.
var (
	// ErrPacketSize: Send was given a packet that is not PacketSize bytes
	// long; nothing went on the wire. A bug in the caller, not temporary.
	ErrPacketSize = errors.New("packet is not PacketSize bytes")
	// ErrNack: the peer received the frame but its handler failed.
	ErrNack = errors.New("peer could not queue the packet (nack)")
	// ErrFull: the peer received the frame and refused it because it is
	// full (flow control). A handler returns an error wrapping it to send
	// the full word; Send returns it for that word. The packet was not
	// queued: keep it and send it again later. It says nothing against
	// the peer's health.
	ErrFull = errors.New("peer is full; packet not queued")
	// ErrAckTimeout: no ack within AckTimeout; the connection was closed.
	ErrAckTimeout = errors.New("no ack in time")
	// ErrBackoff: the last dial to this peer failed recently; Send and Dial
	// fail fast until the backoff delay has passed.
	ErrBackoff = errors.New("peer unreachable, backing off")
	// ErrIdentity: the listener presented a key other than the peer's.
	ErrIdentity = errors.New("peer presented another identity key")
	// ErrUnknownPeer: a connecting node's key is not in the nodes file.
	ErrUnknownPeer = errors.New("identity key not in the nodes file")
	// ErrProtocol: the peer spoke another protocol version or packet size,
	// or broke the framing (short frame, bad ack word).
	ErrProtocol = errors.New("link protocol violation")
	// ErrPeerRefused: the listener closed the connection instead of
	// accepting it (it does not know our key, or is at its limits).
	ErrPeerRefused = errors.New("peer refused the link")
	// ErrClosed: the transport, link or connection was closed.
	ErrClosed = errors.New("transport closed")
)

// Dir tells FrameLog what was written or read.
type Dir string

// FrameLog directions.
const (
	// FrameOut: a frame written on a link this node dialled.
	FrameOut Dir = "out"
	// FrameIn: a frame read on a connection this node accepted.
	FrameIn Dir = "in"
	// AckOut: a ready, ack or nack word written by the listener.
	AckOut Dir = "ack-out"
	// AckIn: a ready, ack or nack word read by the dialer.
	AckIn Dir = "ack-in"
)

// ContextDialer opens the byte stream under TLS. *net.Dialer is one; a
// SOCKS5 dialer of golang.org/x/net/proxy (to reach onion addresses through
// Tor) is another.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config of the direct transport. Zero values take the defaults in
// brackets.
type Config struct {
	// Identity is this node's Ed25519 identity key (required): its public
	// half is the key of this node's certificate.
	Identity ed25519.PrivateKey
	// Lookup tells the listener which node owns a connecting key (a lookup
	// into the verified nodes file); false refuses the connection. Required
	// by Listen. Called concurrently.
	Lookup func(ed25519.PublicKey) (sdk.NodeID, bool)
	// PacketSize is the size of every frame in bytes (65536). Every node of
	// a mixnet must use the same.
	PacketSize int
	// Window is the number of frames in flight per link, and of handlers
	// running per accepted connection (32).
	Window int
	// HandshakeTimeout bounds TCP connect + TLS handshake + ready word (10 s).
	HandshakeTimeout time.Duration
	// WriteTimeout bounds writing one frame or word (30 s).
	WriteTimeout time.Duration
	// AckTimeout bounds the wait for a frame's ack once written (60 s); a
	// late ack closes the connection.
	AckTimeout time.Duration
	// FrameTimeout bounds receiving the rest of a frame once its first byte
	// arrived (30 s): a stalling peer is disconnected.
	FrameTimeout time.Duration
	// IdleTimeout closes a dialled connection without frames in flight for
	// this long (90 s). The listener closes a connection silent for twice
	// as long, so the dialer, which knows when it is done, closes first.
	IdleTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed dial before
	// the next one (500 ms, doubling to 1 min).
	BackoffMin, BackoffMax time.Duration
	// MaxConnsPerPeer is the number of accepted connections kept per node
	// (4); a new one beyond closes the least recently active connection
	// of that node that has no frame in its handler, or is refused when
	// all are busy.
	MaxConnsPerPeer int
	// MaxHandshakes is the number of inbound handshakes in progress at once
	// (64). A connection beyond it closes the oldest handshake in progress
	// of the source address holding the most, so idle connections never
	// lock peers out: a peer's handshake completes long before its slot is
	// the oldest.
	MaxHandshakes int
	// MaxHandshakesPerSource is the number of inbound handshakes in
	// progress from one source address (8; an IPv6 source counts by its
	// /64); one more closes that source's oldest. Loopback sources are exempt (behind a Tor onion service every
	// peer is 127.0.0.1): for them only MaxHandshakes applies.
	MaxHandshakesPerSource int
	// InboundHandshakeTimeout bounds an inbound TLS handshake from accept
	// to its end (5 s, at most HandshakeTimeout).
	InboundHandshakeTimeout time.Duration
	// Dialer opens TCP streams (a net.Dialer with 15 s keep-alive).
	Dialer ContextDialer
	// FrameLog, if set, is called for every complete frame and word
	// written or read, with its size in bytes as written to or read from
	// the TLS connection (tests assert every frame on every link has the
	// same size). Called concurrently, from I/O paths: keep it fast.
	FrameLog func(dir Dir, peer sdk.NodeID, size int)
	// Full, if set, reports whether this node is full (flow control,
	// docs/mixnet.md): the listener then sends the full ready word to a
	// connecting node, so that its probes learn it. Called once per
	// accepted connection. Frames are refused by the Handler, not here.
	Full func() bool
	// Logger gets "[MIX]" lines (nothing above Debug carries an address).
	Logger hclog.Logger
}

func (c *Config) setDefaults() error {
	if len(c.Identity) != ed25519.PrivateKeySize {
		return fmt.Errorf("transport: identity key has %d bytes, want an Ed25519 private key (%d)", len(c.Identity), ed25519.PrivateKeySize)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.PacketSize == 0 {
		c.PacketSize = DefaultPacketSize
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.WriteTimeout, 30*time.Second)
	def(&c.AckTimeout, 60*time.Second)
	def(&c.FrameTimeout, 30*time.Second)
	def(&c.IdleTimeout, 90*time.Second)
	def(&c.BackoffMin, 500*time.Millisecond)
	def(&c.BackoffMax, time.Minute)
	if c.MaxConnsPerPeer == 0 {
		c.MaxConnsPerPeer = 4
	}
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = 64
	}
	if c.MaxHandshakesPerSource == 0 {
		c.MaxHandshakesPerSource = 8
	}
	def(&c.InboundHandshakeTimeout, min(5*time.Second, c.HandshakeTimeout))
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{KeepAlive: 15 * time.Second}
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	switch {
	case c.PacketSize < 1 || c.PacketSize > MaxPacketSize:
		return fmt.Errorf("transport: packet size %d out of range 1..%d", c.PacketSize, MaxPacketSize)
	case c.Window < 1 || c.Window > MaxWindow:
		return fmt.Errorf("transport: window %d out of range 1..%d", c.Window, MaxWindow)
	case c.MaxConnsPerPeer < 1 || c.MaxHandshakes < 1 || c.MaxHandshakesPerSource < 1:
		return errors.New("transport: MaxConnsPerPeer, MaxHandshakes and MaxHandshakesPerSource must be positive")
	case c.BackoffMin > c.BackoffMax:
		return errors.New("transport: BackoffMin above BackoffMax")
	}
	for _, d := range []time.Duration{c.HandshakeTimeout, c.InboundHandshakeTimeout, c.WriteTimeout, c.AckTimeout, c.FrameTimeout, c.IdleTimeout, c.BackoffMin} {
		if d < 0 {
			return errors.New("transport: negative timeout")
		}
	}
	return nil
}
