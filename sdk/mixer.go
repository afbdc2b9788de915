package sdk

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"
)

// KindMixer is the mix-node stage kind: it turns one fixed-size packet
// into a forward, an exit or a drop (Sphinx, Danezis & Goldberg 2009, §3).
// A plugin that is also a Router (the entry, building packets from a
// message) serves both kinds from one process. A mixer whose config
// schema has the key "packet_size" gets it from the core: on a mix node
// the core sets it to its mix.packet_size (the size of every frame on the
// wire) and refuses a stage config that names another value.
const KindMixer Kind = "mixer"

// NodeID names a mix node: the SHA-256 of its Ed25519 identity key (32 B).
type NodeID [32]byte

// String is 64 lowercase hex digits.
func (n NodeID) String() string { return hex.EncodeToString(n[:]) }

// MarshalText writes the id as hex.
func (n NodeID) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText reads 64 hex digits.
func (n *NodeID) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("node id: want 64 hex digits, got %d", len(b))
	}
	_, err := hex.Decode(n[:], b)
	return err
}

// Short is the first 8 hex digits, for logs.
func (n NodeID) Short() string { return hex.EncodeToString(n[:4]) }

// EpochKey is one epoch's mix public key: X25519 (32 bytes), or X-Wing
// (1216 bytes: ML-KEM-768 encapsulation key then X25519 public key) in a
// network of the KEM Sphinx format (mix.sphinx_format xwing). A key is valid
// for packets in [NotBefore, NotAfter) (the epoch plus its grace). Private
// keys never travel: see MixState.KeyDir.
type EpochKey struct {
	Epoch     uint64
	Public    []byte
	NotBefore time.Time
	NotAfter  time.Time
}

// DirectoryNode is one node of the mixnet as the core knows it: verified
// descriptor data plus current health.
type DirectoryNode struct {
	ID      NodeID
	Name    string
	Exit    bool
	Healthy bool
	// Keys are the node's public epoch keys.
	Keys []EpochKey
	// Capabilities are the signed descriptor's capabilities, sorted:
	// "exit" (then Exit is true), "mail2news" (the exit posts news), and
	// any a network defines (1 to 32 of a-z 0-9 -).
	Capabilities []string
}

// CapMail2News is the capability of a node that posts messages for
// mail2news addresses to Usenet: the sphinx router picks such an exit for
// them.
const CapMail2News = "mail2news"

// Has reports whether the node's descriptor lists capability c.
func (n DirectoryNode) Has(c string) bool {
	for _, x := range n.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

// MixState is everything a mixer needs besides packets: the current epoch,
// this node's own keys (current, next, and previous ones still in their
// grace period: the core removes a key here before it deletes the key
// file), this node's id, and the directory.
//
// Keys of one's own carry only the public half. The private key of epoch
// E is the file KeyDir/mix-<E>.key (sdk/mixkey's format), which the mixer
// reads itself: it is then the one process holding the private key, in a
// mixkey.Key it wipes as soon as the key is no longer in Keys (retired).
// The core never keeps a private key after writing its file, and private
// keys never cross the plugin protocol (gRPC buffers cannot be zeroed).
type MixState struct {
	Epoch uint64
	Keys  []EpochKey
	Self  NodeID
	Nodes []DirectoryNode
	// KeyDir is the absolute path of this node's key directory.
	KeyDir string
}

// MixAction is what to do with a packet.
type MixAction int

const (
	// MixForward: send MixResult.Packet to MixResult.NextHop.
	MixForward MixAction = 1
	// MixExit: this node is the last hop; MixResult.Fragment holds the
	// payload fragment (or a returning loop: LoopID set).
	MixExit MixAction = 2
	// MixDrop: a cover drop packet reached its last hop; discard it.
	MixDrop MixAction = 3
)

// Fragment is one exit payload piece of a message: MessageID (16 B) is
// shared by all fragments of one message, Index counts from 0 to Count-1.
type Fragment struct {
	MessageID [16]byte
	Index     int
	Count     int
	Data      []byte
}

// MixResult is the outcome of Mix.
type MixResult struct {
	Action MixAction
	// NextHop and Packet for MixForward; Packet has the size of the input.
	NextHop NodeID
	Packet  []byte
	// ReplayTag (32 B) identifies the packet at this hop under Epoch's key:
	// the core drops a packet whose tag it has seen (checked before any
	// forwarding) and keeps tags until the epoch's key is deleted.
	ReplayTag [32]byte
	Epoch     uint64
	// Fragment for MixExit of a message.
	Fragment *Fragment
	// LoopID (16 B, non-zero) for MixExit of one of this node's loop packets.
	LoopID [16]byte
}

// MixerInPlace is what a Mixer may also implement to unwrap without a copy
// of its own: over the plugin protocol MixInPlace is called instead of Mix
// with a writable copy of the packet, in the memory the host reads the
// reply from, and it may overwrite it: a result whose Packet (or
// Fragment.Data) is in packet is handed back without another copy. It
// must give the results Mix gives for the same bytes; packet is valid
// until it returns.
type MixerInPlace interface {
	MixInPlace(ctx context.Context, packet []byte) (*MixResult, error)
}

// CoverKind selects a cover packet.
type CoverKind int

const (
	// CoverDrop: a full-length path whose last hop discards the packet.
	CoverDrop CoverKind = 1
	// CoverLoop: a path that returns to this node (measures path health).
	CoverLoop CoverKind = 2
)

// Packet is a packet ready to send, from Cover.
type Packet struct {
	NextHop NodeID
	Data    []byte
	// LoopID for loops: the core expects it back. Path, in order (for a
	// loop, this node last): the core credits or blames a loop's nodes,
	// and learns the path length (`hops`) from any cover packet.
	LoopID [16]byte
	Path   []NodeID
}

// Mixer processes packets at a mix node. Packets on the wire are opaque to
// the core: it never parses them. Errors: a malformed, tagged, replayed
// under a deleted key or otherwise unprocessable packet is a permanent
// error (the core drops and counts it, never forwards it); temporary errors
// make the core retry later.
type Mixer interface {
	// SetMixState replaces the keys and the directory. The core calls it
	// after Configure, after a restart of the plugin, at every epoch change
	// and when health changes.
	SetMixState(ctx context.Context, s MixState) error
	// Mix unwraps one packet with this node's keys. packet is read-only
	// (it may be the core's shared memory, mapped read-only: a write
	// faults) and valid until Mix returns: the result must not refer to
	// it. The core calls Mix from many goroutines at once (it batches
	// concurrent calls into one round trip).
	Mix(ctx context.Context, packet []byte) (*MixResult, error)
	// Cover builds one cover packet of kind k, indistinguishable on the
	// wire from a real one.
	Cover(ctx context.Context, k CoverKind) (*Packet, error)
	// Assemble parses the concatenated Data of all fragments of one message
	// (in Index order) into the message with its inner envelope.
	Assemble(ctx context.Context, data []byte) (*Message, error)
}
