package transport

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Stats are the transport's counters since it was made. Bytes count
// plaintext as written to or read from TLS (frames and words), without TLS
// overhead.
type Stats struct {
	FramesSent, FramesReceived uint64 // complete frames
	BytesSent, BytesReceived   uint64
	// Acks and Nacks received by links; AcksSent and NacksSent by listeners.
	Acks, Nacks, AcksSent, NacksSent uint64
	// Fulls received by links and FullsSent by listeners: frames refused
	// because the receiving node was full (flow control, not failures).
	Fulls, FullsSent uint64
	// Dials: connections established by links; Probes: successful probes.
	Dials, Probes uint64
	// DialErrors: failed outbound attempts (TCP, TLS, identity, refusal).
	DialErrors uint64
	// WrongIdentity: outbound handshakes where the listener showed another
	// key (also in DialErrors).
	WrongIdentity uint64
	// Accepted: inbound connections authenticated.
	Accepted uint64
	// HandshakeErrors: inbound connections dropped before authentication:
	// garbage, timeouts, unknown keys.
	HandshakeErrors uint64
	// LimitDrops: inbound handshakes closed to make room (MaxHandshakes,
	// MaxHandshakesPerSource) and connections closed for MaxConnsPerPeer.
	LimitDrops uint64
	// UnknownPeers: inbound keys not in the nodes file (also in
	// HandshakeErrors).
	UnknownPeers uint64
	// ProtocolErrors: other protocol version or packet size, cut frames,
	// unexpected words.
	ProtocolErrors uint64
	// Timeouts: connections or dials ended by a handshake, write, ack or
	// frame timeout.
	Timeouts uint64
	// WrongSize: Send calls refused because the packet was not PacketSize.
	WrongSize uint64
	// ConnsOut and ConnsIn are the connections open now.
	ConnsOut, ConnsIn int64
}

type counters struct {
	framesSent, framesReceived, bytesSent, bytesReceived atomic.Uint64
	acks, nacks, acksSent, nacksSent                     atomic.Uint64
	fulls, fullsSent                                     atomic.Uint64
	dials, probes, dialErrors, wrongIdentity             atomic.Uint64
	accepted, handshakeErrors, unknownPeers, limitDrops  atomic.Uint64
	protocolErrors, timeouts, wrongSize                  atomic.Uint64
	connsOut, connsIn                                    atomic.Int64
}

// Stats implements Transport.
func (t *Direct) Stats() Stats {
	c := &t.st
	return Stats{
		FramesSent: c.framesSent.Load(), FramesReceived: c.framesReceived.Load(),
		BytesSent: c.bytesSent.Load(), BytesReceived: c.bytesReceived.Load(),
		Acks: c.acks.Load(), Nacks: c.nacks.Load(), AcksSent: c.acksSent.Load(), NacksSent: c.nacksSent.Load(),
		Fulls: c.fulls.Load(), FullsSent: c.fullsSent.Load(),
		Dials: c.dials.Load(), Probes: c.probes.Load(), DialErrors: c.dialErrors.Load(), WrongIdentity: c.wrongIdentity.Load(),
		Accepted: c.accepted.Load(), HandshakeErrors: c.handshakeErrors.Load(), UnknownPeers: c.unknownPeers.Load(), LimitDrops: c.limitDrops.Load(),
		ProtocolErrors: c.protocolErrors.Load(), Timeouts: c.timeouts.Load(), WrongSize: c.wrongSize.Load(),
		ConnsOut: c.connsOut.Load(), ConnsIn: c.connsIn.Load(),
	}
}

// FrameLogWriter returns a Config.FrameLog that writes one line per frame
// or word to w: "<dir> <unix time in ns> <64-hex node id> <size>\n" (e.g.
// "out 1764667200123456789 3f...9a 65536"): what an observer of the link
// sees, with the time it saw it. Lines from concurrent calls do not
// interleave. For tests, traces and debugging: it names peers, so never
// point it at a production log.
func FrameLogWriter(w io.Writer) func(Dir, sdk.NodeID, int) {
	var mu sync.Mutex
	return func(d Dir, peer sdk.NodeID, size int) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "%s %d %s %d\n", d, time.Now().UnixNano(), peer, size)
	}
}
