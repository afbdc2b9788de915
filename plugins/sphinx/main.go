// Command sphinx is the mixnet's packet stage: at the entry a Router that
// turns a message (with its SMTP envelope) into fixed-size Sphinx packets
// over paths of distinct healthy mix nodes; at every node a Mixer that
// unwraps a packet into a forward, an exit fragment or a drop, builds cover
// (drop and loop) packets and parses reassembled messages at the exit.
// Packet format: SPEC.md; design: docs/mixnet.md.
package main

import (
	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
)

// defaults is the config a stage gets for every key it does not set.
var defaults = Config{
	Hops:            3,
	MaxHops:         sphinx.DefaultMaxHops,
	PacketSize:      sphinx.DefaultPacketSize,
	MaxMessageBytes: 32 << 20,
	SphinxFormat:    "x25519",
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "sphinx",
		Version: "1.0.0",
		Doc:     "Sphinx mixnet: message -> fragments -> packets (router); unwrap, cover traffic, reassembly (mixer)",
		Kinds:   []sdk.Kind{sdk.KindRouter, sdk.KindMixer},
		Needs:   sdk.NeedAll,
		Config:  defaults,
		New:     newStage,
	})
}
