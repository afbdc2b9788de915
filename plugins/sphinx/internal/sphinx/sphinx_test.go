package sphinx

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestRoundTripEveryPathLengthAndPayloadSize(t *testing.T) {
	geometries := []Geometry{
		DefaultGeometry(),
		{PacketSize: 2048, MaxHops: MaxHopsLimit},
		{PacketSize: 1024, MaxHops: 1},
	}
	for _, g := range geometries {
		nodes := makeNodes(t, g.MaxHops)
		sizes := []int{0, 1, 100, g.PayloadSize() - 1, g.PayloadSize()}
		for hops := 1; hops <= g.MaxHops; hops++ {
			for _, size := range sizes {
				payload := make([]byte, size)
				rand.Read(payload)
				pkt, err := NewPacket(g, pathOf(nodes[:hops]), Exit, payload, rand.Reader)
				if err != nil {
					t.Fatalf("%+v hops=%d size=%d: NewPacket: %v", g, hops, size, err)
				}
				if len(pkt) != g.PacketSize {
					t.Fatalf("created packet is %d bytes, want %d", len(pkt), g.PacketSize)
				}
				tr := travel(t, g, nodes[:hops], pkt)
				last := tr.results[hops-1]
				if last.Action != Exit {
					t.Fatalf("%+v hops=%d: last action %v", g, hops, last.Action)
				}
				if !bytes.Equal(last.Payload, payload) {
					t.Fatalf("%+v hops=%d size=%d: payload mismatch", g, hops, size)
				}
			}
		}
	}
}
