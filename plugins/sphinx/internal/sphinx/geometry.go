package sphinx

import (
	"errors"
	"fmt"
)

// Sizes of the fixed fields of the format, in bytes.
const (
	// GroupElementSize is the size of the blinded group element α, an X25519
	// u-coordinate (RFC 7748).
	GroupElementSize = 32
	// MACSize is the size of the header MAC γ (full HMAC-SHA256 output).
	MACSize = 32
	// NodeIDSize is the size of a node identifier in a forward command.
	NodeIDSize = 32
	// ReplayTagSize is the size of the replay tag returned by Unwrap.
	ReplayTagSize = 32
	// PayloadTagSize is the size of the per-hop AES-GCM tag that authenticates
	// one payload layer. It travels inside the hop's encrypted routing slot.
	PayloadTagSize = 16
	// LengthPrefixSize is the size of the big-endian length that precedes the
	// application payload inside the innermost payload layer.
	LengthPrefixSize = 4
	// SlotSize is the size of one per-hop routing slot inside β:
	// command (1) | next node id (32) | next γ (32) | payload tag (16).
	SlotSize = 1 + NodeIDSize + MACSize + PayloadTagSize

	// DefaultPacketSize is the default total packet size: 64 KiB, header
	// included.
	DefaultPacketSize = 65536
	// DefaultMaxHops is the default maximum path length.
	DefaultMaxHops = 3
	// MaxHopsLimit is the largest MaxHops a Geometry may have.
	MaxHopsLimit = 5
	// MaxPacketSize is the largest PacketSize a Geometry may have (16 MiB).
	MaxPacketSize = 1 << 24
)

// Slot field offsets inside a decrypted routing slot.
const (
	slotCmd   = 0
	slotNext  = slotCmd + 1
	slotGamma = slotNext + NodeIDSize
	slotTag   = slotGamma + MACSize
)

// maxBeta is the size of β for the largest allowed geometry.
const maxBeta = MaxHopsLimit * SlotSize

// ErrBadGeometry is returned (wrapped) by Geometry.Validate and by every
// function taking a Geometry when the geometry is out of range.
var ErrBadGeometry = errors.New("sphinx: invalid geometry")

// Geometry fixes the shape of every packet of one mixnet. All nodes and
// senders of a mixnet must use the same Geometry: a packet made with another
// geometry fails with ErrBadSize or ErrBadMAC.
//
// Layout (SPEC.md §2): payload (PacketSize-HeaderSize bytes) | α (32) |
// β (MaxHops*SlotSize) | γ (32).
type Geometry struct {
	// PacketSize is the total size of a packet in bytes, header included,
	// identical at every hop. Default 65536.
	PacketSize int
	// MaxHops is the maximum number of hops of a path, 1..MaxHopsLimit.
	// Shorter paths are padded so that they look like MaxHops-hop paths.
	// Default 3.
	MaxHops int
}

// DefaultGeometry returns the mixmta default geometry: 65536-byte packets and
// at most 3 hops (HeaderSize 307 bytes, PayloadSize 65225 bytes).
func DefaultGeometry() Geometry {
	return Geometry{PacketSize: DefaultPacketSize, MaxHops: DefaultMaxHops}
}

// HeaderSize returns the size in bytes of the Sphinx header (α, β and γ):
// 64 + MaxHops*SlotSize. It does not validate g.
func (g Geometry) HeaderSize() int {
	return GroupElementSize + g.betaSize() + MACSize
}

// PayloadSize returns the number of application bytes a packet carries: the
// payload region minus the 4-byte length prefix. NewPacket accepts payloads
// of 0..PayloadSize bytes and Unwrap returns them exactly at the exit. It
// does not validate g; for an invalid geometry the result is meaningless.
func (g Geometry) PayloadSize() int {
	return g.payloadRegion() - LengthPrefixSize
}

// Validate reports whether g is usable: 1 <= MaxHops <= MaxHopsLimit,
// PacketSize <= MaxPacketSize and PayloadSize() >= 1. The error wraps
// ErrBadGeometry.
func (g Geometry) Validate() error {
	if g.MaxHops < 1 || g.MaxHops > MaxHopsLimit {
		return fmt.Errorf("%w: MaxHops %d not in 1..%d", ErrBadGeometry, g.MaxHops, MaxHopsLimit)
	}
	if g.PacketSize > MaxPacketSize {
		return fmt.Errorf("%w: PacketSize %d exceeds %d", ErrBadGeometry, g.PacketSize, MaxPacketSize)
	}
	if min := g.HeaderSize() + LengthPrefixSize + 1; g.PacketSize < min {
		return fmt.Errorf("%w: PacketSize %d below the minimum %d for %d hops", ErrBadGeometry, g.PacketSize, min, g.MaxHops)
	}
	return nil
}

// betaSize is the size of the routing information β.
func (g Geometry) betaSize() int { return g.MaxHops * SlotSize }

// payloadRegion is the size of the encrypted payload region at the start of
// the packet; the header starts at this offset.
func (g Geometry) payloadRegion() int { return g.PacketSize - g.HeaderSize() }
