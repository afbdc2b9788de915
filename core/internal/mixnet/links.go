package mixnet

import (
	"context"
	"fmt"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/sdk"
)

// TransportLinks is Links over a mix transport: a node id is resolved
// through the nodes file to the peer (address and pinned identity) a link
// is dialled to.
type TransportLinks struct {
	Transport transport.Transport
	// Lookup finds a node of the current nodes file by id.
	Lookup func(id sdk.NodeID) (*nodes.Node, bool)
	// Onion: Tor is configured, so links go to the peers' onion addresses
	// (a node without one cannot be reached), never to their mix
	// addresses.
	Onion bool
}

var _ Links = (*TransportLinks)(nil)

func (l *TransportLinks) peer(id sdk.NodeID) (transport.Peer, error) {
	n, ok := l.Lookup(id)
	if !ok {
		return transport.Peer{}, fmt.Errorf("node %s not in the nodes file or consensus", id.Short())
	}
	addr := n.MixAddress
	if l.Onion {
		if addr = n.OnionAddress; addr == "" {
			return transport.Peer{}, fmt.Errorf("node %s has no onion address in its descriptor; with a tor: section mix links go to onion services only", id.Short())
		}
	}
	return transport.Peer{ID: n.ID, Address: addr, Identity: n.Identity}, nil
}

// Send implements Links: it dials (or reuses) the link to node id and
// returns after the peer's ack.
func (l *TransportLinks) Send(ctx context.Context, id sdk.NodeID, packet []byte) error {
	p, err := l.peer(id)
	if err != nil {
		return err
	}
	link, err := l.Transport.Dial(ctx, p)
	if err != nil {
		return err
	}
	return link.Send(ctx, packet)
}

// Probe implements Links: a TLS handshake with node id; an error wrapping
// transport.ErrFull when its ready word says it is full.
func (l *TransportLinks) Probe(ctx context.Context, id sdk.NodeID) error {
	p, err := l.peer(id)
	if err != nil {
		return err
	}
	full, err := l.Transport.ProbeFull(ctx, p)
	if err == nil && full {
		err = fmt.Errorf("node %s answered: %w", id.Short(), transport.ErrFull)
	}
	return err
}
