package sphinx

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/rand"
	"testing"
)

// Both packet formats side by side, and the primitives a KEM hop is made
// of, so that each format's cost can be set against the sum of its
// primitives (bench/sphinx-pq.sh prints the ratios).

// BenchmarkKEMNewPacket creates a 3-hop packet of the KEM format (64 KiB,
// full payload).
func BenchmarkKEMNewPacket(b *testing.B) {
	g := DefaultKEMGeometry()
	path := kemPath(makeKEMNodes(b, 3))
	payload := make([]byte, g.PayloadSize())
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	m := startCPUMeter(b)
	for b.Loop() {
		if _, err := NewKEMPacket(g, path, Exit, payload, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkKEMUnwrap processes the first hop (Forward) of a 3-hop 64 KiB
// packet of the KEM format, a 64 KiB copy included as in BenchmarkUnwrap.
func BenchmarkKEMUnwrap(b *testing.B) {
	g := DefaultKEMGeometry()
	nodes := makeKEMNodes(b, 3)
	pkt, err := NewKEMPacket(g, kemPath(nodes), Exit, make([]byte, 1000), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, len(pkt))
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	m := startCPUMeter(b)
	for b.Loop() {
		copy(buf, pkt)
		if res, err := UnwrapKEM(g, nodes[0].priv, buf); err != nil || res.Action != Forward {
			b.Fatal(err)
		}
	}
	m.stop()
}

func BenchmarkPrimitiveMLKEM768Encapsulate(b *testing.B) {
	dk, _ := mlkem.GenerateKey768()
	ek := dk.EncapsulationKey()
	m := startCPUMeter(b)
	for b.Loop() {
		ek.Encapsulate()
	}
	m.stop()
}

func BenchmarkPrimitiveMLKEM768Decapsulate(b *testing.B) {
	dk, _ := mlkem.GenerateKey768()
	_, ct := dk.EncapsulationKey().Encapsulate()
	m := startCPUMeter(b)
	for b.Loop() {
		if _, err := dk.Decapsulate(ct); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkPrimitiveX25519ECDH is one X25519 with crypto/ecdh (a parsed
// peer key), what decapsulation's X25519 half costs; encapsulation adds a
// key generation (a fixed-base multiplication) to it.
func BenchmarkPrimitiveX25519ECDH(b *testing.B) {
	k, _ := ecdh.X25519().GenerateKey(rand.Reader)
	p, _ := ecdh.X25519().GenerateKey(rand.Reader)
	pub := p.PublicKey()
	m := startCPUMeter(b)
	for b.Loop() {
		if _, err := k.ECDH(pub); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

func BenchmarkPrimitiveX25519KeyGen(b *testing.B) {
	m := startCPUMeter(b)
	for b.Loop() {
		if _, err := ecdh.X25519().GenerateKey(rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkPrimitiveXWingDecap is an X-Wing decapsulation with the HPKE
// key schedule and one export: what UnwrapKEM spends before the header MAC.
func BenchmarkPrimitiveXWingDecap(b *testing.B) {
	n := makeKEMNodes(b, 1)[0]
	ct, _, _ := hpke.NewSender(n.hop.MixKey, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
	m := startCPUMeter(b)
	for b.Loop() {
		r, err := hpke.NewRecipient(ct, n.priv, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
		if err != nil {
			b.Fatal(err)
		}
		r.Export(kemExport, 32)
	}
	m.stop()
}

// BenchmarkPayloadSeal is one AES-256-GCM seal of a default KEM payload
// region (60781 bytes), what creation spends per hop on the payload.
func BenchmarkPayloadSeal(b *testing.B) {
	L := DefaultKEMGeometry().payloadRegion()
	var key [32]byte
	buf := make([]byte, L, L+16)
	b.SetBytes(int64(L))
	m := startCPUMeter(b)
	for b.Loop() {
		payloadAEAD(&key).Seal(buf[:0], payloadNonce[:], buf[:L], nil)
	}
	m.stop()
}
