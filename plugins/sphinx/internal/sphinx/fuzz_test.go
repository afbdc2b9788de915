package sphinx

import (
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"testing"
)

// fuzzGeometry is small so that the fuzzer can reach the right size.
var fuzzGeometry = Geometry{PacketSize: 400, MaxHops: 3}

func fuzzKey(t testing.TB) *ecdh.PrivateKey {
	seed := sha256.Sum256([]byte("mixmta-sphinx-v1 fuzz key"))
	priv, err := ecdh.X25519().NewPrivateKey(seed[:])
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// FuzzUnwrap: arbitrary bytes never make Unwrap panic, and a success always
// has a consistent result (Forward with exactly PacketSize bytes, Exit with
// at most PayloadSize bytes). The corpus is seeded with valid packets for the
// fuzz key so that mutations exercise the checks after the size check.
func FuzzUnwrap(f *testing.F) {
	g := fuzzGeometry
	priv := fuzzKey(f)
	self := Hop{MixKey: priv.PublicKey().Bytes()}
	other := makeNodes(f, 1)[0].hop
	for i, path := range [][]Hop{{self}, {self, other}} {
		pkt, err := NewPacket(g, path, Exit, []byte("fuzz seed"), newDetReader("fuzz seed "+string(rune('0'+i))))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pkt)
	}
	f.Add([]byte{})
	f.Add(make([]byte, g.PacketSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := clone(data)
		res, err := Unwrap(g, mk(priv), in)
		checkUnwrapOutcome(t, res, err, g.PacketSize, g.PayloadSize())
	})
}

// checkUnwrapOutcome fails t unless an unwrap ended with a known error and
// no result, or with a consistent result: Forward with exactly packetSize
// bytes, Exit with at most payloadSize bytes, or Drop.
func checkUnwrapOutcome(t *testing.T, res *Result, err error, packetSize, payloadSize int) {
	t.Helper()
	if err != nil {
		if res != nil {
			t.Fatalf("error %v with a non-nil result", err)
		}
		for _, known := range []error{ErrBadSize, ErrBadMAC, ErrBadRouting, ErrPayloadAuth, ErrBadPayload} {
			if errors.Is(err, known) {
				return
			}
		}
		t.Fatalf("unexpected error %v", err)
	}
	switch res.Action {
	case Forward:
		if len(res.Packet) != packetSize {
			t.Fatalf("forward packet of %d bytes", len(res.Packet))
		}
	case Exit:
		if len(res.Payload) > payloadSize {
			t.Fatalf("exit payload of %d bytes", len(res.Payload))
		}
	case Drop:
	default:
		t.Fatalf("action %v", res.Action)
	}
}

// FuzzParse drives the parsing code below the MACs, which the fuzzer cannot
// reach through Unwrap: splitting a packet of any geometry into its regions,
// the routing slot checks, and the exit payload decoder. None may panic, and
// a decoded payload must lie within its region.
func FuzzParse(f *testing.F) {
	f.Add(int32(65536), int8(3), []byte{0, 0, 0, 3, 'a', 'b', 'c', 0})
	f.Add(int32(400), int8(5), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(int32(-1), int8(-1), []byte{})
	f.Fuzz(func(t *testing.T, size int32, hops int8, data []byte) {
		g := Geometry{PacketSize: int(size), MaxHops: int(hops)}
		if g.Validate() == nil {
			if g.HeaderSize()+g.PayloadSize()+LengthPrefixSize != g.PacketSize {
				t.Fatalf("%+v: sizes do not add up", g)
			}
		}
		if len(data) >= SlotSize {
			cmd, err := checkSlot(data[:SlotSize])
			if err == nil && cmd != Forward && cmd != Exit && cmd != Drop {
				t.Fatalf("checkSlot accepted command %v", cmd)
			}
		}
		out, err := decodePayload(data)
		if err == nil {
			if len(out)+LengthPrefixSize > len(data) {
				t.Fatalf("decoded %d bytes from a %d-byte region", len(out), len(data))
			}
			// Re-encoding gives the region back exactly (the encoding is
			// canonical).
			re := make([]byte, len(data))
			encodePayload(re, out)
			if string(re) != string(data) {
				t.Fatalf("decode/encode is not the identity")
			}
		} else if !errors.Is(err, ErrBadPayload) {
			t.Fatalf("decodePayload error %v", err)
		}
	})
}
