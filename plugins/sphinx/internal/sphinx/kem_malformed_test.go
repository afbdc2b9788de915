package sphinx

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
)

// An α whose X25519 half is a low-order point (the decapsulation's X25519
// gives all zeros, which crypto/hpke refuses) is ErrBadMAC, like any other
// changed α: no panic, no result, the packet untouched.
func TestUnwrapKEMRejectsLowOrderX25519Half(t *testing.T) {
	g := KEMGeometry{PacketSize: 8192, MaxHops: 3}
	nodes := makeKEMNodes(t, 1)
	pkt, err := NewKEMPacket(g, kemPath(nodes), Exit, []byte("x"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	order8 := []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}
	p := bytes.Repeat([]byte{0xff}, 32)
	p[0], p[31] = 0xec, 0x7f // p - 1 ≡ -1, of order 2
	lowOrder := [][]byte{make([]byte, 32), append([]byte{1}, make([]byte, 31)...), order8, p}
	L := g.payloadRegion()
	for i, u := range lowOrder {
		in := clone(pkt)
		copy(in[L+KEMCiphertextSize-32:], u)
		before := clone(in)
		res, err := UnwrapKEM(g, nodes[0].priv, in)
		if !errors.Is(err, ErrBadMAC) || res != nil {
			t.Errorf("low-order point %d: (%v, %v), want (nil, ErrBadMAC)", i, res, err)
		}
		if !bytes.Equal(before, in) {
			t.Errorf("low-order point %d: the rejected packet was modified", i)
		}
	}
}

// reMAC lets a malicious sender (who knows the hop's secret of its own
// packet) rewrite the plaintext of hop n's routing information: edit
// changes the decrypted β (slot first), which is encrypted again and
// given a valid γ.
func reMAC(t *testing.T, g KEMGeometry, n kemNode, pkt []byte, edit func(b []byte)) []byte {
	t.Helper()
	L := g.payloadRegion()
	R := g.MaxHops * KEMSlotSize
	ct := pkt[L : L+KEMCiphertextSize]
	r, err := hpke.NewRecipient(ct, n.priv, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
	if err != nil {
		t.Fatal(err)
	}
	var k hopKeys
	if err := kemKeys(&k, ct, r.Export); err != nil {
		t.Fatal(err)
	}
	b := kemRouting(t, g, n, pkt)[:R]
	edit(b)
	xorStream(&k.stream, b)
	out := clone(pkt)
	copy(out[L+KEMCiphertextSize:], b)
	var gamma [MACSize]byte
	kemMAC(&gamma, &k.mac, b)
	copy(out[L+KEMCiphertextSize+R:], gamma[:])
	return out
}

// An authenticated routing slot that breaks §15.3 (an unknown command, or
// an Exit/Drop slot with a non-zero next id, γ or next-α byte) is
// ErrBadRouting: a sender cannot smuggle bytes to the exit in the unused
// KEM ciphertext field.
func TestUnwrapKEMRejectsMalformedAuthenticatedSlot(t *testing.T) {
	g := KEMGeometry{PacketSize: 8192, MaxHops: 3}
	nodes := makeKEMNodes(t, 1)
	for _, final := range []Command{Exit, Drop} {
		pkt, err := NewKEMPacket(g, kemPath(nodes), final, []byte("x"), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		// Control: the re-MACed but unchanged packet still unwraps.
		if _, err := UnwrapKEM(g, nodes[0].priv, reMAC(t, g, nodes[0], pkt, func([]byte) {})); err != nil {
			t.Fatalf("%v: re-MACed unchanged packet: %v", final, err)
		}
		cases := map[string]func(b []byte){
			"command 0x07":  func(b []byte) { b[0] = 7 },
			"next id byte":  func(b []byte) { b[slotNext] = 1 },
			"next γ byte":   func(b []byte) { b[slotGamma+31] = 1 },
			"next α first":  func(b []byte) { b[slotNextCT] = 1 },
			"next α X25519": func(b []byte) { b[KEMSlotSize-1] = 0x80 },
			"next α ML-KEM": func(b []byte) { b[slotNextCT+600] = 0x10 },
		}
		for name, edit := range cases {
			t.Run(fmt.Sprintf("%v/%s", final, name), func(t *testing.T) {
				res, err := UnwrapKEM(g, nodes[0].priv, reMAC(t, g, nodes[0], pkt, edit))
				if !errors.Is(err, ErrBadRouting) || res != nil {
					t.Fatalf("(%v, %v), want (nil, ErrBadRouting)", res, err)
				}
			})
		}
	}
}

// A path shorter than the geometry leaves random routing padding at the
// end of β (and the filler past it at later hops): a bit flipped there, at
// any hop, fails that hop's MAC, so no byte of the header is a channel
// that a later hop could read.
func TestKEMTamperInShortPathPaddingCaught(t *testing.T) {
	g := KEMGeometry{PacketSize: 8192, MaxHops: 5}
	nodes := makeKEMNodes(t, 2)
	pkt, err := NewKEMPacket(g, kemPath(nodes), Exit, []byte("short"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ins, _ := kemTravel(t, g, nodes, pkt)
	L, R := g.payloadRegion(), g.MaxHops*KEMSlotSize
	for hop, in := range ins {
		for _, off := range []int{2 * KEMSlotSize, 3*KEMSlotSize + 500, R - 1} {
			p := clone(in)
			p[L+KEMCiphertextSize+off] ^= 1
			if _, err := UnwrapKEM(g, nodes[hop].priv, p); !errors.Is(err, ErrBadMAC) {
				t.Fatalf("hop %d: β byte %d (padding or filler) flipped: %v, want ErrBadMAC", hop, off, err)
			}
		}
	}
}
