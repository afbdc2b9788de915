package main

import (
	"crypto/hpke"
	"fmt"
	"io"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// packetFormat is the network's Sphinx packet format (config key
// sphinx_format): X25519 (SPEC.md §1-§13) or the hybrid KEM format with
// X-Wing (SPEC.md §15). A stage serves exactly one: its own keys and every
// directory key must be of it.
type packetFormat struct {
	kind mixkey.Kind
	geo  sphinx.Geometry    // X25519
	kgeo sphinx.KEMGeometry // XWing
}

func newPacketFormat(kind mixkey.Kind, packetSize, maxHops int) packetFormat {
	return packetFormat{
		kind: kind,
		geo:  sphinx.Geometry{PacketSize: packetSize, MaxHops: maxHops},
		kgeo: sphinx.KEMGeometry{PacketSize: packetSize, MaxHops: maxHops},
	}
}

// validate checks the geometry of the format.
func (f packetFormat) validate() error {
	if f.kind == mixkey.XWing {
		return f.kgeo.Validate()
	}
	return f.geo.Validate()
}

// payloadSize is the application bytes one packet carries.
func (f packetFormat) payloadSize() int {
	if f.kind == mixkey.XWing {
		return f.kgeo.PayloadSize()
	}
	return f.geo.PayloadSize()
}

// publicSize is the size of a mix public key of the format (bytes).
func (f packetFormat) publicSize() int {
	if f.kind == mixkey.XWing {
		return mixkey.XWingPublicSize
	}
	return mixkey.Size
}

// parseKey checks a directory public key of the format and, for X-Wing,
// parses it once (parsing expands the ML-KEM matrix, a third of an
// encapsulation): nil kem for X25519. Errors: a key of the wrong size or
// an invalid X-Wing key.
func (f packetFormat) parseKey(pub []byte) (hpke.PublicKey, error) {
	if len(pub) != f.publicSize() {
		return nil, fmt.Errorf("public key of %d bytes, the %s format's are %d", len(pub), f.kind, f.publicSize())
	}
	if f.kind != mixkey.XWing {
		return nil, nil
	}
	return sphinx.ParseKEMPublicKey(pub)
}

// newPacket builds one packet over path.
func (f packetFormat) newPacket(path []candidate, final sphinx.Command, payload []byte, r io.Reader) ([]byte, error) {
	if f.kind == mixkey.XWing {
		hops := make([]sphinx.KEMHop, len(path))
		for i, c := range path {
			hops[i] = sphinx.KEMHop{NodeID: c.id, MixKey: c.kem}
		}
		return sphinx.NewKEMPacket(f.kgeo, hops, final, payload, r)
	}
	return sphinx.NewPacket(f.geo, hopsOf(path), final, payload, r)
}
