package sphinx

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"

	"github.com/mixmta/mixmta/sdk/mixkey"
)

// detReader is the deterministic randomness of the test vectors (SPEC.md
// §12.1): the AES-256-CTR keystream (IV all zero) under the key
// SHA-256(seed).
type detReader struct{ s cipher.Stream }

func newDetReader(seed string) io.Reader {
	key := sha256.Sum256([]byte(seed))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err)
	}
	return &detReader{cipher.NewCTR(block, make([]byte, aes.BlockSize))}
}

func (r *detReader) Read(p []byte) (int, error) {
	clear(p)
	r.s.XORKeyStream(p, p)
	return len(p), nil
}

// testNode is a mix node of the tests: its key and node id are derived as in
// SPEC.md §12.2 (private key = SHA-256("mixmta-sphinx-v1 test node key " || i),
// node id = SHA-256(public key)).
type testNode struct {
	priv *ecdh.PrivateKey
	hop  Hop
}

func makeNodes(tb testing.TB, count int) []testNode {
	tb.Helper()
	nodes := make([]testNode, count)
	for i := range nodes {
		seed := sha256.Sum256([]byte(fmt.Sprintf("mixmta-sphinx-v1 test node key %d", i)))
		priv, err := ecdh.X25519().NewPrivateKey(seed[:])
		if err != nil {
			tb.Fatal(err)
		}
		pub := priv.PublicKey().Bytes()
		nodes[i] = testNode{priv: priv, hop: Hop{NodeID: sha256.Sum256(pub), MixKey: pub}}
	}
	return nodes
}

func pathOf(nodes []testNode) []Hop {
	p := make([]Hop, len(nodes))
	for i := range nodes {
		p[i] = nodes[i].hop
	}
	return p
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// hopTrace is what travelling one packet along its path produced.
type hopTrace struct {
	results []*Result // one per hop
	inputs  [][]byte  // copy of the packet each hop received
}

// travel unwraps pkt at each node in turn, checking the Forward chain, and
// returns the trace. It fails the test on any error.
func travel(tb testing.TB, g Geometry, nodes []testNode, pkt []byte) hopTrace {
	tb.Helper()
	var tr hopTrace
	cur := clone(pkt)
	for i, n := range nodes {
		tr.inputs = append(tr.inputs, clone(cur))
		res, err := Unwrap(g, mk(n.priv), cur)
		if err != nil {
			tb.Fatalf("hop %d/%d: Unwrap: %v", i, len(nodes), err)
		}
		tr.results = append(tr.results, res)
		if i < len(nodes)-1 {
			if res.Action != Forward {
				tb.Fatalf("hop %d/%d: action %v, want forward", i, len(nodes), res.Action)
			}
			if res.Next != nodes[i+1].hop.NodeID {
				tb.Fatalf("hop %d: next %x, want %x", i, res.Next, nodes[i+1].hop.NodeID)
			}
			cur = clone(res.Packet)
		}
	}
	return tr
}

// decryptRouting returns what hop priv sees after decrypting the routing
// information of packet (β ‖ 0^t XOR ρ): its slot followed by the next β. It
// recomputes the hop's keys with the package internals.
func decryptRouting(tb testing.TB, g Geometry, priv *ecdh.PrivateKey, packet []byte) []byte {
	tb.Helper()
	L := g.payloadRegion()
	var alpha [32]byte
	copy(alpha[:], packet[L:])
	pub, err := ecdh.X25519().NewPublicKey(alpha[:])
	if err != nil {
		tb.Fatal(err)
	}
	ss, err := priv.ECDH(pub)
	if err != nil {
		tb.Fatal(err)
	}
	var s [32]byte
	copy(s[:], ss)
	var k hopKeys
	deriveKeys(&k, &alpha, &s)
	R := g.betaSize()
	b := make([]byte, R+SlotSize)
	copy(b, packet[L+GroupElementSize:L+GroupElementSize+R])
	xorStream(&k.stream, b)
	return b
}

// longestZeroRun returns the length of the longest run of zero bytes in b.
func longestZeroRun(b []byte) int {
	best, cur := 0, 0
	for _, c := range b {
		if c == 0 {
			cur++
			best = max(best, cur)
		} else {
			cur = 0
		}
	}
	return best
}

// mk is the mixkey.Key of an X25519 crypto/ecdh key, nil for nil or
// another curve (what Unwrap refuses with ErrBadKey).
func mk(p *ecdh.PrivateKey) *mixkey.Key {
	if p == nil || p.Curve() != ecdh.X25519() {
		return nil
	}
	k, err := mixkey.New(p.Bytes())
	if err != nil {
		panic(err)
	}
	return k
}
