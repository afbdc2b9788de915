package sphinx

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"testing/iotest"
)

var testGeometries = []Geometry{
	DefaultGeometry(),
	{PacketSize: 2048, MaxHops: MaxHopsLimit},
	{PacketSize: 1024, MaxHops: 1},
	{PacketSize: 512, MaxHops: 4},
}

func TestDefaultGeometrySizes(t *testing.T) {
	g := DefaultGeometry()
	if g.PacketSize != 65536 || g.MaxHops != 3 {
		t.Fatalf("DefaultGeometry() = %+v", g)
	}
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := g.HeaderSize(); got != 307 {
		t.Errorf("HeaderSize() = %d, want 307 (32+3*81+32)", got)
	}
	if got := g.PayloadSize(); got != 65225 {
		t.Errorf("PayloadSize() = %d, want 65225 (65536-307-4)", got)
	}
}

func TestGeometryValidate(t *testing.T) {
	for _, tc := range []struct {
		g  Geometry
		ok bool
	}{
		{DefaultGeometry(), true},
		{Geometry{PacketSize: 65536, MaxHops: 5}, true},
		{Geometry{PacketSize: 65536, MaxHops: 1}, true},
		{Geometry{PacketSize: MaxPacketSize, MaxHops: 3}, true},
		{Geometry{PacketSize: 32 + 81 + 32 + 4 + 1, MaxHops: 1}, true}, // 1-byte payload
		{Geometry{PacketSize: 32 + 81 + 32 + 4, MaxHops: 1}, false},    // no payload room
		{Geometry{PacketSize: 65536, MaxHops: 0}, false},
		{Geometry{PacketSize: 65536, MaxHops: 6}, false},
		{Geometry{PacketSize: 65536, MaxHops: -1}, false},
		{Geometry{PacketSize: MaxPacketSize + 1, MaxHops: 3}, false},
		{Geometry{PacketSize: 0, MaxHops: 3}, false},
		{Geometry{PacketSize: -5, MaxHops: 3}, false},
		{Geometry{}, false},
	} {
		err := tc.g.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tc.g, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadGeometry) {
			t.Errorf("%+v.Validate() = %v, does not wrap ErrBadGeometry", tc.g, err)
		}
	}
}

func TestRoundTripEveryPathLengthAndPayloadSize(t *testing.T) {
	for _, g := range testGeometries {
		nodes := makeNodes(t, g.MaxHops)
		sizes := []int{0, 1, 100, g.PayloadSize() - 1, g.PayloadSize()}
		for hops := 1; hops <= g.MaxHops; hops++ {
			for _, size := range sizes {
				name := fmt.Sprintf("packet=%d/maxhops=%d/hops=%d/payload=%d", g.PacketSize, g.MaxHops, hops, size)
				t.Run(name, func(t *testing.T) {
					payload := make([]byte, size)
					rand.Read(payload)
					pkt, err := NewPacket(g, pathOf(nodes[:hops]), Exit, payload, rand.Reader)
					if err != nil {
						t.Fatalf("NewPacket: %v", err)
					}
					tr := travel(t, g, nodes[:hops], pkt)
					last := tr.results[hops-1]
					if last.Action != Exit {
						t.Fatalf("last action %v, want exit", last.Action)
					}
					if !bytes.Equal(last.Payload, payload) {
						t.Fatalf("exit payload differs from the sent payload")
					}
					if last.Packet != nil || last.Next != ([32]byte{}) {
						t.Fatalf("exit result carries forwarding fields")
					}
				})
			}
		}
	}
}

func TestEveryPacketAtEveryHopHasPacketSize(t *testing.T) {
	for _, g := range testGeometries {
		nodes := makeNodes(t, g.MaxHops)
		for hops := 1; hops <= g.MaxHops; hops++ {
			pkt, err := NewPacket(g, pathOf(nodes[:hops]), Exit, []byte("x"), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if len(pkt) != g.PacketSize {
				t.Fatalf("%+v: created packet is %d bytes", g, len(pkt))
			}
			tr := travel(t, g, nodes[:hops], pkt)
			for i, in := range tr.inputs {
				if len(in) != g.PacketSize {
					t.Errorf("%+v hops=%d: hop %d received %d bytes", g, hops, i, len(in))
				}
			}
			for i, res := range tr.results[:hops-1] {
				if len(res.Packet) != g.PacketSize {
					t.Errorf("%+v hops=%d: hop %d forwarded %d bytes", g, hops, i, len(res.Packet))
				}
			}
		}
	}
}

func TestDropPacketIsDiscardedByLastHop(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, g.MaxHops)
	for hops := 1; hops <= g.MaxHops; hops++ {
		pkt, err := NewPacket(g, pathOf(nodes[:hops]), Drop, nil, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tr := travel(t, g, nodes[:hops], pkt)
		last := tr.results[hops-1]
		if last.Action != Drop || last.Payload != nil || last.Packet != nil {
			t.Fatalf("hops=%d: last result %+v, want a bare drop", hops, last)
		}
	}
}

// The routing information a hop decrypts must not reveal the path length:
// after the last real hop's slot there is padding that looks random, never a
// zero run (which would tell the exit how many slots were unused), for every
// path length. The same holds for the β every hop forwards.
func TestRoutingInfoRevealsNoPathLength(t *testing.T) {
	for _, g := range testGeometries {
		nodes := makeNodes(t, g.MaxHops)
		for hops := 1; hops <= g.MaxHops; hops++ {
			for trial := 0; trial < 4; trial++ {
				pkt, err := NewPacket(g, pathOf(nodes[:hops]), Exit, nil, rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				tr := travel(t, g, nodes[:hops], pkt)
				for i, in := range tr.inputs {
					b := decryptRouting(t, g, nodes[i].priv, in)
					// b = our slot ‖ next β; the last SlotSize bytes of the
					// next β are this hop's own keystream (not secret to it).
					rest := b[SlotSize : len(b)-SlotSize]
					if len(rest) > 0 && longestZeroRun(rest) >= 8 {
						t.Fatalf("%+v hops=%d hop=%d: routing info after our slot has a zero run of %d bytes",
							g, hops, i, longestZeroRun(rest))
					}
					beta := in[g.payloadRegion()+GroupElementSize : g.PacketSize-MACSize]
					if longestZeroRun(beta) >= 8 {
						t.Fatalf("%+v hops=%d hop=%d: received β has a zero run", g, hops, i)
					}
				}
			}
		}
	}
}

// A hop's position is hidden: a first hop of a 1-hop path and of a
// MaxHops-hop path get packets of the same size with the same layout, and the
// only plaintext a middle hop obtains (its slot) has the same structure
// whatever the position.
func TestHopCannotTellItsPosition(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, g.MaxHops)
	var sizes []int
	for hops := 1; hops <= g.MaxHops; hops++ {
		pkt, err := NewPacket(g, pathOf(nodes[:hops]), Exit, []byte("m"), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(pkt))
		tr := travel(t, g, nodes[:hops], pkt)
		for i := 0; i < hops-1; i++ {
			slot := decryptRouting(t, g, nodes[i].priv, tr.inputs[i])[:SlotSize]
			if Command(slot[slotCmd]) != Forward {
				t.Fatalf("middle hop slot command %v", Command(slot[slotCmd]))
			}
			if isZero32((*[32]byte)(slot[slotGamma:slotTag])) {
				t.Fatalf("middle hop slot has a zero next MAC")
			}
		}
	}
	for _, s := range sizes {
		if s != g.PacketSize {
			t.Fatalf("packet sizes by path length: %v", sizes)
		}
	}
}

func TestHeaderBitFlipFailsMAC(t *testing.T) {
	for _, g := range []Geometry{DefaultGeometry(), {PacketSize: 1024, MaxHops: 5}} {
		nodes := makeNodes(t, g.MaxHops)
		pkt, err := NewPacket(g, pathOf(nodes), Exit, []byte("header flip"), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tr := travel(t, g, nodes, pkt)
		L := g.payloadRegion()
		// Every bit of the header at the first hop, and a bit in each header
		// field of every later hop's input.
		for hop, in := range tr.inputs {
			for bit := L * 8; bit < g.PacketSize*8; bit++ {
				pos := bit - L*8
				if hop > 0 && pos != 0 && pos != 255 && pos != 300 && pos != g.HeaderSize()*8-1 {
					continue
				}
				flipped := clone(in)
				flipped[bit/8] ^= 1 << (bit % 8)
				p := clone(flipped)
				res, err := Unwrap(g, mk(nodes[hop].priv), p)
				if !errors.Is(err, ErrBadMAC) {
					t.Fatalf("%+v: hop %d, header bit %d flipped: got (%v, %v), want ErrBadMAC", g, hop, pos, res, err)
				}
				if !bytes.Equal(p, flipped) {
					t.Fatalf("Unwrap modified the packet although it failed with ErrBadMAC")
				}
			}
		}
	}
}

func TestPayloadBitFlipDetectedAtNextHop(t *testing.T) {
	// Exhaustively in a small geometry, sampled in the default one.
	for _, g := range []Geometry{{PacketSize: 400, MaxHops: 3}, DefaultGeometry()} {
		nodes := makeNodes(t, g.MaxHops)
		for _, final := range []Command{Exit, Drop} {
			pkt, err := NewPacket(g, pathOf(nodes), final, []byte("payload flip"), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			tr := travel(t, g, nodes, pkt)
			L := g.payloadRegion()
			for hop, in := range tr.inputs {
				var bits []int
				if L <= 1024 {
					for b := 0; b < L*8; b++ {
						bits = append(bits, b)
					}
				} else {
					bits = []int{0, 1, 7, 8, 4096 * 8, L*8/2 + 3, L*8 - 8, L*8 - 1}
				}
				for _, bit := range bits {
					p := clone(in)
					p[bit/8] ^= 1 << (bit % 8)
					res, err := Unwrap(g, mk(nodes[hop].priv), p)
					if !errors.Is(err, ErrPayloadAuth) {
						t.Fatalf("%+v %v: payload bit %d flipped before hop %d: got (%v, %v), want ErrPayloadAuth",
							g, final, bit, hop, res, err)
					}
				}
			}
		}
	}
}

func TestWrongKeyFailsMAC(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, 4)
	pkt, err := NewPacket(g, pathOf(nodes[:3]), Exit, []byte("k"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	for _, priv := range []*ecdh.PrivateKey{nodes[1].priv, nodes[2].priv, nodes[3].priv, other} {
		if _, err := Unwrap(g, mk(priv), clone(pkt)); !errors.Is(err, ErrBadMAC) {
			t.Fatalf("Unwrap with a wrong key: %v, want ErrBadMAC", err)
		}
	}
	// The next hop's packet is not processable by the hop that made it.
	tr := travel(t, g, nodes[:3], pkt)
	if _, err := Unwrap(g, mk(nodes[0].priv), clone(tr.inputs[1])); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("hop 0 unwrapping its own output: %v, want ErrBadMAC", err)
	}
}

func TestWrongGeometryFails(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, 5)
	pkt, err := NewPacket(g, pathOf(nodes[:1]), Exit, []byte("g"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []Geometry{{PacketSize: 65536, MaxHops: 5}, {PacketSize: 65536, MaxHops: 2}} {
		if _, err := Unwrap(other, mk(nodes[0].priv), clone(pkt)); !errors.Is(err, ErrBadMAC) {
			t.Fatalf("Unwrap with geometry %+v: %v, want ErrBadMAC", other, err)
		}
	}
	if _, err := Unwrap(Geometry{PacketSize: 4096, MaxHops: 3}, mk(nodes[0].priv), clone(pkt)); !errors.Is(err, ErrBadSize) {
		t.Fatalf("Unwrap with another packet size: %v, want ErrBadSize", err)
	}
}

func TestReplayTag(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, g.MaxHops)
	path := pathOf(nodes)
	pkt, err := NewPacket(g, path, Exit, []byte("same"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := travel(t, g, nodes, pkt)
	b := travel(t, g, nodes, pkt) // the same packet again: a replay
	seen := map[[32]byte]string{}
	for i := range nodes {
		if a.results[i].ReplayTag != b.results[i].ReplayTag {
			t.Fatalf("hop %d: replayed packet has another replay tag", i)
		}
		if a.results[i].ReplayTag == ([32]byte{}) {
			t.Fatalf("hop %d: zero replay tag", i)
		}
		seen[a.results[i].ReplayTag] = fmt.Sprintf("packet 0 hop %d", i)
	}
	// Other packets, even with the same path and payload, have other tags.
	for p := 1; p <= 8; p++ {
		other, err := NewPacket(g, path, Exit, []byte("same"), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tr := travel(t, g, nodes, other)
		for i, res := range tr.results {
			if prev, dup := seen[res.ReplayTag]; dup {
				t.Fatalf("packet %d hop %d has the replay tag of %s", p, i, prev)
			}
			seen[res.ReplayTag] = fmt.Sprintf("packet %d hop %d", p, i)
		}
	}
}

// Unwrap must return an error, never panic, on bad sizes, keys, geometries
// and group elements, and leave the packet untouched when the header is
// rejected.
func TestUnwrapRejectsBadInput(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, 1)
	pkt, err := NewPacket(g, pathOf(nodes), Exit, []byte("x"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdh.P256().GenerateKey(rand.Reader)
	withAlpha := func(alpha []byte) []byte {
		p := clone(pkt)
		copy(p[g.payloadRegion():], alpha)
		return p
	}
	// Low-order points of Curve25519 (u = 0, 1, and the order-8 points) and
	// their non-canonical encodings.
	lowOrder := [][]byte{
		make([]byte, 32),
		append([]byte{1}, make([]byte, 31)...),
		{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
		{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
		{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		{0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		{0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	}
	type tc struct {
		name   string
		g      Geometry
		priv   *ecdh.PrivateKey
		packet []byte
		want   error
	}
	cases := []tc{
		{"nil packet", g, nodes[0].priv, nil, ErrBadSize},
		{"one byte short", g, nodes[0].priv, pkt[:len(pkt)-1], ErrBadSize},
		{"one byte long", g, nodes[0].priv, append(clone(pkt), 0), ErrBadSize},
		{"nil key", g, nil, clone(pkt), ErrBadKey},
		{"P-256 key", g, p256, clone(pkt), ErrBadKey},
		{"invalid geometry", Geometry{PacketSize: 65536, MaxHops: 9}, nodes[0].priv, clone(pkt), ErrBadGeometry},
		{"all-zero packet", g, nodes[0].priv, make([]byte, g.PacketSize), ErrBadMAC},
	}
	for i, a := range lowOrder {
		cases = append(cases, tc{fmt.Sprintf("low-order alpha %d", i), g, nodes[0].priv, withAlpha(a), ErrBadMAC})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := clone(c.packet)
			res, err := Unwrap(c.g, mk(c.priv), c.packet)
			if !errors.Is(err, c.want) || res != nil {
				t.Fatalf("Unwrap = (%v, %v), want (nil, %v)", res, err, c.want)
			}
			if !bytes.Equal(before, c.packet) {
				t.Fatalf("Unwrap modified a packet it rejected with %v", err)
			}
		})
	}
}

func TestNewPacketRejectsBadArguments(t *testing.T) {
	g := DefaultGeometry()
	nodes := makeNodes(t, g.MaxHops+1)
	good := pathOf(nodes[:g.MaxHops])
	shortKey := pathOf(nodes[:2])
	shortKey[1].MixKey = shortKey[1].MixKey[:31]
	zeroKey := pathOf(nodes[:2])
	zeroKey[1].MixKey = make([]byte, 32)
	for _, tc := range []struct {
		name    string
		g       Geometry
		path    []Hop
		final   Command
		payload []byte
		want    error
	}{
		{"invalid geometry", Geometry{PacketSize: 10, MaxHops: 3}, good, Exit, nil, ErrBadGeometry},
		{"empty path", g, nil, Exit, nil, ErrBadPath},
		{"path longer than MaxHops", g, pathOf(nodes), Exit, nil, ErrBadPath},
		{"final command forward", g, good, Forward, nil, ErrBadCommand},
		{"final command unknown", g, good, Command(9), nil, ErrBadCommand},
		{"payload one byte too large", g, good, Exit, make([]byte, g.PayloadSize()+1), ErrPayloadTooLarge},
		{"mix key of 31 bytes", g, shortKey, Exit, nil, ErrBadKey},
		{"low-order mix key", g, zeroKey, Exit, nil, ErrBadKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, err := NewPacket(tc.g, tc.path, tc.final, tc.payload, rand.Reader)
			if !errors.Is(err, tc.want) || pkt != nil {
				t.Fatalf("NewPacket = (%d bytes, %v), want %v", len(pkt), err, tc.want)
			}
		})
	}
	t.Run("failing randomness", func(t *testing.T) {
		_, err := NewPacket(g, good, Exit, nil, iotest.ErrReader(errors.New("no entropy")))
		if err == nil {
			t.Fatal("NewPacket succeeded without randomness")
		}
	})
}

// Only the sender can make an authentic header with a bad command or an
// authentic exit payload with a bad encoding; the hop must still reject them
// cleanly.
func TestAuthenticMalformedPacketsRejected(t *testing.T) {
	g := Geometry{PacketSize: 1024, MaxHops: 3}
	nodes := makeNodes(t, 2)
	L := g.payloadRegion()
	t.Run("unknown command", func(t *testing.T) {
		for _, cmd := range []Command{0, 4, 0xff} {
			pkt := make([]byte, g.PacketSize)
			encodePayload(pkt[:L], nil)
			if err := build(g, pathOf(nodes[:1]), cmd, pkt, rand.Reader); err != nil {
				t.Fatal(err)
			}
			before := clone(pkt)
			if _, err := Unwrap(g, mk(nodes[0].priv), pkt); !errors.Is(err, ErrBadRouting) {
				t.Fatalf("command %v: %v, want ErrBadRouting", cmd, err)
			}
			if !bytes.Equal(before, pkt) {
				t.Fatalf("Unwrap modified a packet it rejected with ErrBadRouting")
			}
		}
	})
	for name, region := range map[string]func([]byte){
		"length beyond region": func(r []byte) { r[0], r[1], r[2], r[3] = 0, 0, 0xff, 0xff },
		"length 2^32-1":        func(r []byte) { r[0], r[1], r[2], r[3] = 0xff, 0xff, 0xff, 0xff },
		"non-zero padding":     func(r []byte) { encodePayload(r, []byte("abc")); r[len(r)-1] = 1 },
	} {
		t.Run(name, func(t *testing.T) {
			pkt := make([]byte, g.PacketSize)
			region(pkt[:L])
			if err := build(g, pathOf(nodes[:2]), Exit, pkt, rand.Reader); err != nil {
				t.Fatal(err)
			}
			res, err := Unwrap(g, mk(nodes[0].priv), pkt)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Unwrap(g, mk(nodes[1].priv), res.Packet); !errors.Is(err, ErrBadPayload) {
				t.Fatalf("%v, want ErrBadPayload", err)
			}
		})
	}
}

func TestCommandString(t *testing.T) {
	for c, want := range map[Command]string{Forward: "forward", Exit: "exit", Drop: "drop", 0x42: "command(0x42)"} {
		if got := c.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(c), got, want)
		}
	}
}

// Unwrap and NewPacket keep no shared state: concurrent use with distinct
// buffers is safe (run with -race).
func TestConcurrentUse(t *testing.T) {
	g := Geometry{PacketSize: 4096, MaxHops: 3}
	nodes := makeNodes(t, 3)
	done := make(chan error)
	for w := 0; w < 4; w++ {
		go func() {
			for i := 0; i < 8; i++ {
				payload := []byte(fmt.Sprintf("worker %d packet %d", w, i))
				pkt, err := NewPacket(g, pathOf(nodes), Exit, payload, rand.Reader)
				if err != nil {
					done <- err
					return
				}
				for _, n := range nodes {
					res, err := Unwrap(g, mk(n.priv), pkt)
					if err != nil {
						done <- err
						return
					}
					if res.Action == Exit && !bytes.Equal(res.Payload, payload) {
						done <- fmt.Errorf("payload mismatch")
						return
					}
					pkt = res.Packet
				}
			}
			done <- nil
		}()
	}
	for w := 0; w < 4; w++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
