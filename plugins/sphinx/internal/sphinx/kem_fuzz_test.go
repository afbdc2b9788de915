package sphinx

import (
	"crypto/sha256"
	"testing"
)

// FuzzUnwrapKEM: arbitrary bytes never make UnwrapKEM panic, and a success
// always has a consistent result. The corpus holds valid packets for the
// fuzz key (one and two hops) so that mutations reach the checks after the
// size check.
func FuzzUnwrapKEM(f *testing.F) {
	g := KEMGeometry{PacketSize: 3800, MaxHops: 2}
	seed := sha256.Sum256([]byte("mixmta-sphinx-kem-v1 fuzz key"))
	priv, pub, err := NewKEMPrivateKey(seed[:])
	if err != nil {
		f.Fatal(err)
	}
	pk, err := ParseKEMPublicKey(pub)
	if err != nil {
		f.Fatal(err)
	}
	self := KEMHop{MixKey: pk}
	other := makeKEMNodes(f, 1)[0].hop
	for i, path := range [][]KEMHop{{self}, {self, other}} {
		pkt, err := NewKEMPacket(g, path, Exit, []byte("fuzz seed"), newDetReader("kem fuzz seed "+string(rune('0'+i))))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pkt)
	}
	f.Add([]byte{})
	f.Add(make([]byte, g.PacketSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := UnwrapKEM(g, priv, clone(data))
		checkUnwrapOutcome(t, res, err, g.PacketSize, g.PayloadSize())
	})
}
