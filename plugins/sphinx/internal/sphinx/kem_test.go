package sphinx

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
)

// kemNode is a mix node of the KEM tests: X-Wing seed =
// SHA-256("mixmta-sphinx-kem-v1 test node key " ‖ i), node id = SHA-256 of
// its public key (SPEC.md §15.7).
type kemNode struct {
	priv hpke.PrivateKey
	hop  KEMHop
}

func makeKEMNodes(tb testing.TB, count int) []kemNode {
	tb.Helper()
	nodes := make([]kemNode, count)
	for i := range nodes {
		seed := sha256.Sum256([]byte(fmt.Sprintf("mixmta-sphinx-kem-v1 test node key %d", i)))
		priv, pub, err := NewKEMPrivateKey(seed[:])
		if err != nil {
			tb.Fatal(err)
		}
		k, err := ParseKEMPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		nodes[i] = kemNode{priv: priv, hop: KEMHop{NodeID: sha256.Sum256(pub), MixKey: k}}
	}
	return nodes
}

func kemPath(nodes []kemNode) []KEMHop {
	p := make([]KEMHop, len(nodes))
	for i := range nodes {
		p[i] = nodes[i].hop
	}
	return p
}

// kemTravel unwraps pkt along nodes, checking the Forward chain; it returns
// each hop's input and result.
func kemTravel(tb testing.TB, g KEMGeometry, nodes []kemNode, pkt []byte) ([][]byte, []*Result) {
	tb.Helper()
	var ins [][]byte
	var res []*Result
	cur := clone(pkt)
	for i, n := range nodes {
		ins = append(ins, clone(cur))
		r, err := UnwrapKEM(g, n.priv, cur)
		if err != nil {
			tb.Fatalf("hop %d/%d: UnwrapKEM: %v", i, len(nodes), err)
		}
		res = append(res, r)
		if i < len(nodes)-1 {
			if r.Action != Forward || r.Next != nodes[i+1].hop.NodeID {
				tb.Fatalf("hop %d: action %v next %x, want forward to %x", i, r.Action, r.Next, nodes[i+1].hop.NodeID)
			}
			cur = clone(r.Packet)
		}
	}
	return ins, res
}

// kemRouting is what hop n sees after decrypting β ‖ 0^t of packet.
func kemRouting(tb testing.TB, g KEMGeometry, n kemNode, packet []byte) []byte {
	tb.Helper()
	L := g.payloadRegion()
	ct := packet[L : L+KEMCiphertextSize]
	r, err := hpke.NewRecipient(ct, n.priv, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
	if err != nil {
		tb.Fatal(err)
	}
	var k hopKeys
	if err := kemKeys(&k, ct, r.Export); err != nil {
		tb.Fatal(err)
	}
	R := g.MaxHops * KEMSlotSize
	b := make([]byte, R+KEMSlotSize)
	copy(b, packet[L+KEMCiphertextSize:L+KEMCiphertextSize+R])
	xorStream(&k.stream, b)
	return b
}

var kemGeometries = []KEMGeometry{DefaultKEMGeometry(), {PacketSize: 8192, MaxHops: 5}, {PacketSize: 65536, MaxHops: 5}}

func TestKEMGeometrySizes(t *testing.T) {
	for _, c := range []struct {
		g                       KEMGeometry
		header, region, payload int
	}{
		{KEMGeometry{65536, 3}, 4755, 60781, 60777},
		{KEMGeometry{65536, 5}, 7157, 58379, 58375},
		{KEMGeometry{8192, 5}, 7157, 1035, 1031},
	} {
		if c.g.HeaderSize() != c.header || c.g.payloadRegion() != c.region || c.g.PayloadSize() != c.payload {
			t.Errorf("%+v: header %d region %d payload %d, want %d %d %d", c.g, c.g.HeaderSize(), c.g.payloadRegion(), c.g.PayloadSize(), c.header, c.region, c.payload)
		}
		if err := c.g.Validate(); err != nil {
			t.Errorf("%+v: %v", c.g, err)
		}
	}
	if err := (KEMGeometry{PacketSize: 7000, MaxHops: 5}).Validate(); !errors.Is(err, ErrBadGeometry) {
		t.Errorf("a packet smaller than a 5-hop KEM header validated: %v", err)
	}
	_, pub, err := NewKEMPrivateKey(make([]byte, KEMSeedSize))
	if err != nil || len(pub) != KEMPublicKeySize {
		t.Fatalf("X-Wing public key: %d bytes, %v", len(pub), err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 32), pub[:KEMPublicKeySize-1]} {
		if _, err := ParseKEMPublicKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKEMPublicKey(%d bytes): %v, want ErrBadKey", len(bad), err)
		}
	}
}

func TestKEMRoundTripEveryPathLength(t *testing.T) {
	for _, g := range kemGeometries {
		nodes := makeKEMNodes(t, g.MaxHops)
		for hops := 1; hops <= g.MaxHops; hops++ {
			for _, size := range []int{0, 1, g.PayloadSize()} {
				payload := make([]byte, size)
				rand.Read(payload)
				pkt, err := NewKEMPacket(g, kemPath(nodes[:hops]), Exit, payload, rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				ins, res := kemTravel(t, g, nodes[:hops], pkt)
				for i, in := range ins {
					if len(in) != g.PacketSize {
						t.Fatalf("%+v: hop %d got %d bytes", g, i, len(in))
					}
				}
				last := res[hops-1]
				if last.Action != Exit || !bytes.Equal(last.Payload, payload) {
					t.Fatalf("%+v hops=%d size=%d: exit got %v with %d bytes", g, hops, size, last.Action, len(last.Payload))
				}
			}
		}
		pkt, err := NewKEMPacket(g, kemPath(nodes), Drop, nil, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, res := kemTravel(t, g, nodes, pkt); res[len(res)-1].Action != Drop {
			t.Fatalf("%+v: drop packet ended with %v", g, res[len(res)-1].Action)
		}
	}
}

// Position and path length stay hidden: what a hop decrypts after its own
// slot is pseudo-random (no zero run), whatever the path length, and every
// hop's input has the same size.
func TestKEMRoutingInfoRevealsNoPathLength(t *testing.T) {
	for _, g := range kemGeometries[:2] {
		nodes := makeKEMNodes(t, g.MaxHops)
		for hops := 1; hops <= g.MaxHops; hops++ {
			pkt, err := NewKEMPacket(g, kemPath(nodes[:hops]), Exit, nil, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ins, _ := kemTravel(t, g, nodes[:hops], pkt)
			for i, in := range ins {
				b := kemRouting(t, g, nodes[i], in)
				rest := b[KEMSlotSize : len(b)-KEMSlotSize]
				if len(rest) > 0 && longestZeroRun(rest) >= 8 {
					t.Fatalf("%+v hops=%d hop=%d: routing info after our slot has a zero run of %d", g, hops, i, longestZeroRun(rest))
				}
				L := g.payloadRegion()
				if longestZeroRun(in[L:]) >= 8 {
					t.Fatalf("%+v hops=%d hop=%d: the header on the wire has a zero run", g, hops, i)
				}
			}
		}
	}
}

// Tampering at every position class of the header (the ML-KEM and X25519
// parts of α, each slot of β, γ) fails the hop's MAC, and at every position
// class of the payload fails the next hop's payload layer, at every hop.
func TestKEMTamperingCaughtAtEveryPositionClass(t *testing.T) {
	g := KEMGeometry{PacketSize: 8192, MaxHops: 5}
	nodes := makeKEMNodes(t, 5)
	pkt, err := NewKEMPacket(g, kemPath(nodes), Exit, []byte("tamper"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ins, _ := kemTravel(t, g, nodes, pkt)
	L := g.payloadRegion()
	R := g.MaxHops * KEMSlotSize
	var header []int                                           // byte offsets into the header
	header = append(header, 0, 1, 544, 1087, 1088, 1100, 1119) // α: ML-KEM part, X25519 part
	for s := 0; s < g.MaxHops; s++ {
		base := KEMCiphertextSize + s*KEMSlotSize
		header = append(header, base, base+1, base+40, base+70, base+SlotSize, base+KEMSlotSize-1)
	}
	header = append(header, KEMCiphertextSize+R, g.HeaderSize()-1) // γ
	checked := 0
	for hop, in := range ins {
		for _, off := range header {
			for _, bit := range []uint{0, 7} {
				p := clone(in)
				p[L+off] ^= 1 << bit
				if _, err := UnwrapKEM(g, nodes[hop].priv, p); !errors.Is(err, ErrBadMAC) {
					t.Fatalf("hop %d: header byte %d bit %d flipped: %v, want ErrBadMAC", hop, off, bit, err)
				}
				checked++
			}
		}
		for _, off := range []int{0, 1, 4, L / 2, L - 1} {
			p := clone(in)
			p[off] ^= 0x80
			if _, err := UnwrapKEM(g, nodes[hop].priv, p); !errors.Is(err, ErrPayloadAuth) {
				t.Fatalf("hop %d: payload byte %d flipped: %v, want ErrPayloadAuth", hop, off, err)
			}
			checked++
		}
	}
	t.Logf("%d tampered positions, every one caught at the hop that received it", checked)
}

func TestKEMWrongKeyAndReplayTag(t *testing.T) {
	g := DefaultKEMGeometry()
	nodes := makeKEMNodes(t, 4)
	pkt, err := NewKEMPacket(g, kemPath(nodes[:3]), Exit, []byte("x"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A key of another node (or of another epoch) opens nothing.
	if _, err := UnwrapKEM(g, nodes[3].priv, clone(pkt)); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("another key: %v, want ErrBadMAC", err)
	}
	a, err := UnwrapKEM(g, nodes[0].priv, clone(pkt))
	if err != nil {
		t.Fatal(err)
	}
	b, err := UnwrapKEM(g, nodes[0].priv, clone(pkt))
	if err != nil {
		t.Fatal(err)
	}
	if a.ReplayTag != b.ReplayTag {
		t.Fatal("the same packet gave two replay tags")
	}
	other, _ := NewKEMPacket(g, kemPath(nodes[:3]), Exit, []byte("x"), rand.Reader)
	c, err := UnwrapKEM(g, nodes[0].priv, other)
	if err != nil {
		t.Fatal(err)
	}
	if c.ReplayTag == a.ReplayTag {
		t.Fatal("two packets gave one replay tag")
	}
	if _, err := UnwrapKEM(g, nil, clone(pkt)); !errors.Is(err, ErrBadKey) {
		t.Fatalf("nil key: %v", err)
	}
	if _, err := UnwrapKEM(g, nodes[0].priv, pkt[:100]); !errors.Is(err, ErrBadSize) {
		t.Fatalf("short packet: %v", err)
	}
	// The X25519 format's packet is not a KEM packet.
	xg := DefaultGeometry()
	xp, _ := NewPacket(xg, pathOf(makeNodes(t, 3)), Exit, nil, rand.Reader)
	if _, err := UnwrapKEM(g, nodes[0].priv, xp); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("an X25519-format packet at a KEM node: %v, want ErrBadMAC", err)
	}
}

func TestKEMNewPacketRejectsBadArguments(t *testing.T) {
	g := DefaultKEMGeometry()
	nodes := makeKEMNodes(t, 4)
	cases := []struct {
		name string
		path []KEMHop
		cmd  Command
		data []byte
		want error
	}{
		{"empty path", nil, Exit, nil, ErrBadPath},
		{"too long", kemPath(nodes), Exit, nil, ErrBadPath},
		{"forward as final", kemPath(nodes[:1]), Forward, nil, ErrBadCommand},
		{"payload too large", kemPath(nodes[:1]), Exit, make([]byte, g.PayloadSize()+1), ErrPayloadTooLarge},
		{"no key", []KEMHop{{}}, Exit, nil, ErrBadKey},
	}
	for _, c := range cases {
		if _, err := NewKEMPacket(g, c.path, c.cmd, c.data, rand.Reader); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// A retired epoch key leaves nothing that opens a recorded packet: a node
// holding every other epoch's key (seed) cannot unwrap it.
func TestKEMRecordedPacketNeedsItsEpochKey(t *testing.T) {
	g := DefaultKEMGeometry()
	var seeds [][]byte
	for e := range 4 {
		s := sha256.Sum256([]byte(fmt.Sprintf("epoch %d", e)))
		seeds = append(seeds, s[:])
	}
	priv, pub, _ := NewKEMPrivateKey(seeds[1])
	pk, _ := ParseKEMPublicKey(pub)
	rec, err := NewKEMPacket(g, []KEMHop{{MixKey: pk}}, Exit, []byte("recorded"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnwrapKEM(g, priv, clone(rec)); err != nil {
		t.Fatalf("the epoch's own key: %v", err)
	}
	for e, s := range seeds {
		if e == 1 {
			continue
		}
		k, _, _ := NewKEMPrivateKey(s)
		if _, err := UnwrapKEM(g, k, clone(rec)); !errors.Is(err, ErrBadMAC) {
			t.Fatalf("epoch %d's key opened epoch 1's packet: %v", e, err)
		}
	}
}

func TestKEMConcurrentUse(t *testing.T) {
	g := DefaultKEMGeometry()
	nodes := makeKEMNodes(t, 3)
	done := make(chan error, 8)
	for range 8 {
		go func() {
			pkt, err := NewKEMPacket(g, kemPath(nodes), Exit, []byte("c"), rand.Reader)
			if err == nil {
				for _, n := range nodes {
					var r *Result
					if r, err = UnwrapKEM(g, n.priv, pkt); err != nil {
						break
					}
					pkt = r.Packet
				}
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
