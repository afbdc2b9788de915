package sphinx

import (
	"errors"
	"fmt"
)

// Errors returned by NewPacket and Unwrap. Compare with errors.Is: some are
// wrapped with detail.
var (
	// ErrBadSize: the packet is not exactly Geometry.PacketSize bytes.
	ErrBadSize = errors.New("sphinx: packet has the wrong size")
	// ErrBadMAC: the header MAC γ does not verify. The header was modified
	// (any bit of α, β or γ), the packet was made for another mix key or
	// geometry, or α is a low-order point. Nothing else in the packet was
	// looked at.
	ErrBadMAC = errors.New("sphinx: header authentication failed")
	// ErrPayloadAuth: the header is authentic but this hop's payload layer is
	// not: the payload was modified (tagged) since the previous honest hop.
	// The packet must be dropped.
	ErrPayloadAuth = errors.New("sphinx: payload authentication failed (tagged packet)")
	// ErrBadRouting: the header is authentic but the decrypted routing slot
	// holds an unknown command or non-zero unused fields. Only the sender can
	// cause this (a bug or a different protocol version).
	ErrBadRouting = errors.New("sphinx: invalid routing command")
	// ErrBadPayload: an authentic exit payload whose length prefix or zero
	// padding is invalid (sender bug or different protocol version).
	ErrBadPayload = errors.New("sphinx: malformed exit payload")
	// ErrPayloadTooLarge: NewPacket got more than Geometry.PayloadSize bytes.
	ErrPayloadTooLarge = errors.New("sphinx: payload too large")
	// ErrBadPath: NewPacket got an empty path or more than MaxHops hops.
	ErrBadPath = errors.New("sphinx: invalid path length")
	// ErrBadCommand: NewPacket got a final command other than Exit or Drop.
	ErrBadCommand = errors.New("sphinx: final command must be Exit or Drop")
	// ErrBadKey: a mix public key is not 32 bytes or is a low-order point, or
	// Unwrap got a nil private key.
	ErrBadKey = errors.New("sphinx: invalid mix key")
)

// Command is a routing command carried (encrypted) in a hop's routing slot,
// and the action Unwrap reports. Its value is the 1-byte wire encoding.
type Command uint8

const (
	// Forward: send Result.Packet to the node Result.Next.
	Forward Command = 0x01
	// Exit: this node is the last hop; deliver Result.Payload locally.
	Exit Command = 0x02
	// Drop: this node is the last hop of a cover (drop) packet; discard it.
	Drop Command = 0x03
)

// String returns "forward", "exit", "drop" or "command(0xNN)".
func (c Command) String() string {
	switch c {
	case Forward:
		return "forward"
	case Exit:
		return "exit"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("command(%#02x)", uint8(c))
}

// Hop is one node of a path, as given to NewPacket.
type Hop struct {
	// NodeID identifies the node to the previous hop (32 bytes, e.g. the
	// SHA-256 of its identity key; the format does not interpret it). The
	// first hop's NodeID is not written into the packet: the sender sends the
	// packet to that node itself.
	NodeID [NodeIDSize]byte
	// MixKey is the node's X25519 mix public key for the current epoch
	// (32 bytes, RFC 7748 encoding, e.g. (*ecdh.PublicKey).Bytes()).
	MixKey []byte
}

// Result is the outcome of a successful Unwrap.
type Result struct {
	// Action is Forward, Exit or Drop.
	Action Command
	// Next is the node id to forward to (Forward only; zero otherwise).
	Next [NodeIDSize]byte
	// Packet is the packet to forward, exactly PacketSize bytes (Forward
	// only). It aliases the packet passed to Unwrap.
	Packet []byte
	// Payload is the application payload, 0..PayloadSize bytes (Exit only).
	// It aliases the packet passed to Unwrap.
	Payload []byte
	// ReplayTag identifies this packet at this mix key (HKDF label
	// "mixmta-sphinx-v1 replay"). The same packet unwrapped twice with the
	// same key yields the same tag; any other packet or key yields another.
	// The caller must reject a packet whose tag it has seen under the same
	// mix key, before acting on it.
	ReplayTag [ReplayTagSize]byte
}
