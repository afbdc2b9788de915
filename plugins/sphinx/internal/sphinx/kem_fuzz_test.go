package sphinx

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
)

// FuzzUnwrapKEM: arbitrary bytes never make UnwrapKEM panic, a success
// always has a consistent result, and ErrBadMAC leaves the packet as it
// was. The corpus holds valid packets for the
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
		in := clone(data)
		res, err := UnwrapKEM(g, priv, in)
		checkUnwrapOutcome(t, res, err, g.PacketSize, g.PayloadSize())
		// The mixer tries the next epoch key on the same buffer after
		// ErrBadMAC: a rejected header must leave the packet untouched.
		if errors.Is(err, ErrBadMAC) && !bytes.Equal(in, data) {
			t.Fatalf("ErrBadMAC, and the packet was modified")
		}
	})
}

// FuzzUnwrapKEMAuthenticated drives what FuzzUnwrapKEM cannot reach: the
// code after the hop's MAC. The harness plays a malicious sender that
// knows the hop secret of its own packet: the fuzzer chooses the
// plaintext routing information (slot first) and the plaintext payload
// region, which are encrypted and authenticated with the hop's keys
// (the payload tag goes into the slot unless the first input byte is
// odd). UnwrapKEM must return a known error or a consistent result, and a
// Forward must carry the slot's next α, node id and γ.
func FuzzUnwrapKEMAuthenticated(f *testing.F) {
	g := KEMGeometry{PacketSize: 3800, MaxHops: 2}
	node := makeKEMNodes(f, 1)[0]
	tmpl, err := NewKEMPacket(g, []KEMHop{node.hop}, Exit, []byte("fuzz"), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	L, R := g.payloadRegion(), g.MaxHops*KEMSlotSize
	ct := clone(tmpl[L : L+KEMCiphertextSize])
	r, err := hpke.NewRecipient(ct, node.priv, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
	if err != nil {
		f.Fatal(err)
	}
	var k hopKeys
	if err := kemKeys(&k, ct, r.Export); err != nil {
		f.Fatal(err)
	}
	// Seeds: the template's own plaintexts (an Exit), and a Forward slot.
	b := make([]byte, R+KEMSlotSize)
	copy(b, tmpl[L+KEMCiphertextSize:L+KEMCiphertextSize+R])
	xorStream(&k.stream, b)
	plain := clone(tmpl[:L+PayloadTagSize])
	copy(plain[L:], b[slotTag:slotTag+PayloadTagSize])
	if _, err := payloadAEAD(&k.payload).Open(plain[:0], payloadNonce[:], plain, nil); err != nil {
		f.Fatal(err)
	}
	f.Add(append(append([]byte{0}, b[:R]...), plain[:L]...))
	fwd := clone(b[:R])
	fwd[0] = byte(Forward)
	f.Add(append(append([]byte{0}, fwd...), plain[:L]...))
	f.Add([]byte{1})

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		badTag := data[0]&1 == 1
		in := make([]byte, R+L)
		copy(in, data[1:])
		beta, payload := in[:R], in[R:]
		pkt := make([]byte, g.PacketSize)
		sealed := payloadAEAD(&k.payload).Seal(pkt[:0], payloadNonce[:], payload, nil)
		if !badTag {
			copy(beta[slotTag:], sealed[L:])
		}
		slot := clone(beta[:KEMSlotSize])
		copy(pkt[L:], ct)
		enc := clone(beta)
		xorStream(&k.stream, enc)
		copy(pkt[L+KEMCiphertextSize:], enc)
		var gamma [MACSize]byte
		kemMAC(&gamma, &k.mac, enc)
		copy(pkt[L+KEMCiphertextSize+R:], gamma[:])

		res, err := UnwrapKEM(g, node.priv, pkt)
		if errors.Is(err, ErrBadMAC) {
			t.Fatalf("a packet with a valid γ failed the MAC")
		}
		checkUnwrapOutcome(t, res, err, g.PacketSize, g.PayloadSize())
		if err == nil && res.Action == Forward {
			h := res.Packet[L:]
			if !bytes.Equal(h[:KEMCiphertextSize], slot[slotNextCT:]) || !bytes.Equal(res.Next[:], slot[slotNext:slotGamma]) ||
				!bytes.Equal(h[KEMCiphertextSize+R:], slot[slotGamma:slotTag]) {
				t.Fatalf("forward packet does not carry the slot's next α, node id and γ")
			}
		}
	})
}
