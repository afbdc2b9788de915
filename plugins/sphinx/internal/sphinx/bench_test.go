package sphinx

import (
	"crypto/rand"
	"testing"
)

// BenchmarkNewPacket creates a 3-hop packet in the default geometry (64 KiB)
// with a full payload.
func BenchmarkNewPacket(b *testing.B) {
	g := DefaultGeometry()
	path := pathOf(makeNodes(b, 3))
	payload := make([]byte, g.PayloadSize())
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewPacket(g, path, Exit, payload, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnwrap processes the first hop (Forward, the full work: ECDH,
// blinding, payload layer) of a 3-hop 64 KiB packet. Each iteration also
// copies the 64 KiB packet into the work buffer (about 1.5 µs), because
// Unwrap works in place.
func BenchmarkUnwrap(b *testing.B) {
	g := DefaultGeometry()
	nodes := makeNodes(b, 3)
	pkt, err := NewPacket(g, pathOf(nodes), Exit, make([]byte, 1000), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, len(pkt))
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, pkt)
		res, err := Unwrap(g, nodes[0].priv, buf)
		if err != nil || res.Action != Forward {
			b.Fatal(err)
		}
	}
}
