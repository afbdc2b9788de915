package main

import (
	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// Config is the sphinx stage's config block in the pipeline file. The
// defaults are in main.go; README.md documents every key.
//
// packet_size and max_hops fix the Sphinx geometry (SPEC.md §1): every node
// and sender of one mixnet must use the same two values. On a mix node the
// core sets packet_size to its mix.packet_size (the transport's frame
// size) and refuses a stage config that names another value.
type Config struct {
	Hops            int   `json:"hops" doc:"path length: mix nodes each packet crosses, the last one an exit (2..max_hops; one hop would let the exit see the sender)"`
	MaxHops         int   `json:"max_hops" doc:"Sphinx geometry: the longest path a packet can describe (1..5); the same on every node of the mixnet"`
	PacketSize      int   `json:"packet_size" doc:"Sphinx geometry: bytes per packet, header included (1024..16777216); the same on every node; on a mix node the core sets it to mix.packet_size"`
	MaxMessageBytes int64 `json:"max_message_bytes" doc:"largest message (header + body, bytes) the entry accepts and the exit reassembles (1..1073741824)"`
	// Mail2NewsLocalPart selects the exit by capability (capability.go).
	// SphinxFormat is the packet format (format.go), the network's.
	SphinxFormat       string `json:"sphinx_format" doc:"Sphinx packet format of the mixnet: x25519, or xwing (hybrid X25519 + ML-KEM-768 KEM Sphinx, post-quantum); the same on every node, equal to the core's mix.sphinx_format"`
	Mail2NewsLocalPart string `json:"mail2news_local_part" doc:"recipients whose local part starts with this (case-insensitive; e.g. mail2news matches mail2news@ and mail2news-YYYYMMDD-group@) travel only to exits with the mail2news capability; empty: none do"`
}

// Limits of the config keys.
const (
	minPacketSize      = 1024
	maxMessageBytesCap = 1 << 30
)

// Validate checks every key and names the first bad one.
func (c *Config) Validate() error {
	if c.MaxHops < 1 || c.MaxHops > sphinx.MaxHopsLimit {
		return sdk.FieldErrorf("max_hops", "must be between 1 and %d, got %d", sphinx.MaxHopsLimit, c.MaxHops)
	}
	// One hop is refused: that node would see both the entry that sent
	// the packet and the message it delivers, so it alone would know who
	// writes to whom.
	if c.Hops < 2 || c.Hops > c.MaxHops {
		return sdk.FieldErrorf("hops", "must be between 2 and max_hops (%d), got %d", c.MaxHops, c.Hops)
	}
	if _, err := mixkey.ParseKind(c.SphinxFormat); err != nil {
		return sdk.FieldErrorf("sphinx_format", "must be x25519 or xwing, got %q", c.SphinxFormat)
	}
	if c.PacketSize < minPacketSize || c.PacketSize > sphinx.MaxPacketSize {
		return sdk.FieldErrorf("packet_size", "must be between %d and %d bytes, got %d", minPacketSize, sphinx.MaxPacketSize, c.PacketSize)
	}
	if err := c.format().validate(); err != nil {
		return sdk.FieldErrorf("packet_size", "%v", err)
	}
	if c.MaxMessageBytes < 1 || c.MaxMessageBytes > maxMessageBytesCap {
		return sdk.FieldErrorf("max_message_bytes", "must be between 1 and %d bytes, got %d", maxMessageBytesCap, c.MaxMessageBytes)
	}
	if !validLocalPrefix(c.Mail2NewsLocalPart) {
		return sdk.FieldErrorf("mail2news_local_part", "must be lower-case letters, digits, '-', '_' or '.', got %q", c.Mail2NewsLocalPart)
	}
	return nil
}

// format is the packet format and geometry the config describes (after
// Validate).
func (c Config) format() packetFormat {
	kind, _ := mixkey.ParseKind(c.SphinxFormat)
	return newPacketFormat(kind, c.PacketSize, c.MaxHops)
}
