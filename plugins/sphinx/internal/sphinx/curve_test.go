package sphinx

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"filippo.io/edwards25519"
)

func randomScalar(t *testing.T) *edwards25519.Scalar {
	var b [64]byte
	rand.Read(b[:])
	s, err := edwards25519.NewScalar().SetUniformBytes(b[:])
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func clamped(t *testing.T, k []byte) *edwards25519.Scalar {
	s, err := edwards25519.NewScalar().SetBytesWithClamping(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustHex(t *testing.T, s string) (out [32]byte) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hex %q", s)
	}
	copy(out[:], b)
	return out
}

// RFC 7748 §5.2 test vectors (the second has a u with bit 255 set).
func TestX25519RFC7748Vectors(t *testing.T) {
	for _, v := range []struct{ k, u, out string }{
		{"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
			"e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
			"c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"},
		{"4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
			"e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
			"95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"},
	} {
		k, u, want := mustHex(t, v.k), mustHex(t, v.u), mustHex(t, v.out)
		var got [32]byte
		x25519(&got, &k, &u)
		if got != want {
			t.Errorf("x25519(%s, %s) = %x, want %s", v.k, v.u, got, v.out)
		}
	}
}

// The hop's blinding uses our x25519; it must agree with crypto/ecdh.
func TestX25519MatchesCryptoECDH(t *testing.T) {
	for i := 0; i < 64; i++ {
		priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
		peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
		want, err := priv.ECDH(peer.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		var k, u, got [32]byte
		copy(k[:], priv.Bytes())
		copy(u[:], peer.PublicKey().Bytes())
		x25519(&got, &k, &u)
		if string(got[:]) != string(want) {
			t.Fatalf("x25519 disagrees with crypto/ecdh")
		}
	}
}

// The sender's arithmetic (scalars mod ℓ, one fixed-base and one
// variable-base multiplication per hop) must give the hop's view (two X25519
// calls per hop) along a whole chain of blindings (SPEC.md §4).
func TestSenderArithmeticMatchesHopX25519(t *testing.T) {
	base := [32]byte{9}
	for trial := 0; trial < 16; trial++ {
		var x [32]byte
		rand.Read(x[:])
		X := clamped(t, x[:])
		// α_0 from the sender's tables equals X25519(x, 9).
		var alpha, ref [32]byte
		scalarBaseMult(&alpha, X)
		x25519(&ref, &x, &base)
		if alpha != ref {
			t.Fatal("scalarBaseMult(clamp(x)) != X25519(x, 9)")
		}
		for hop := 0; hop < MaxHopsLimit; hop++ {
			node, _ := ecdh.X25519().GenerateKey(rand.Reader)
			var y, s [32]byte
			copy(y[:], node.PublicKey().Bytes())
			scalarMult(&s, X, &y)
			pub, _ := ecdh.X25519().NewPublicKey(alpha[:])
			hs, err := node.ECDH(pub)
			if err != nil || string(hs) != string(s[:]) {
				t.Fatalf("hop %d: sender's s_i differs from the hop's ECDH", hop)
			}
			var b, next, want [32]byte
			rand.Read(b[:])
			x25519(&next, &b, &alpha) // the hop's blinding
			X.Multiply(X, clamped(t, b[:]))
			scalarBaseMult(&want, X)
			if next != want {
				t.Fatalf("hop %d: hop's X25519(b, α) differs from sender's X·clamp(b)·B", hop)
			}
			alpha = next
		}
	}
}

func TestScalarMultMatchesEdwards(t *testing.T) {
	for i := 0; i < 16; i++ {
		k := randomScalar(t)
		var viaLadder, viaTables [32]byte
		base := [32]byte{9}
		scalarMult(&viaLadder, k, &base)
		scalarBaseMult(&viaTables, k)
		if viaLadder != viaTables {
			t.Fatal("ladder and edwards25519 tables disagree on k·B")
		}
	}
	var zero [32]byte
	var out [32]byte
	base := [32]byte{9}
	scalarMult(&out, edwards25519.NewScalar(), &base)
	if out != zero {
		t.Fatalf("0·B = %x, want the point at infinity (u = 0)", out)
	}
}

// deriveKeys is a hand-rolled HKDF-SHA256; it must equal crypto/hkdf.
func TestDeriveKeysIsHKDFSHA256(t *testing.T) {
	for i := 0; i < 8; i++ {
		var alpha, s [32]byte
		rand.Read(alpha[:])
		rand.Read(s[:])
		var k hopKeys
		deriveKeys(&k, &alpha, &s)
		for _, c := range []struct {
			label string
			got   []byte
		}{
			{"mixmta-sphinx-v1 header stream", k.stream[:]},
			{"mixmta-sphinx-v1 header mac", k.mac[:]},
			{"mixmta-sphinx-v1 payload", k.payload[:]},
			{"mixmta-sphinx-v1 blinding", k.blind[:]},
			{"mixmta-sphinx-v1 replay", k.replay[:]},
		} {
			want, err := hkdf.Key(sha256.New, s[:], alpha[:], c.label, 32)
			if err != nil {
				t.Fatal(err)
			}
			if string(want) != string(c.got) {
				t.Fatalf("label %q: deriveKeys differs from HKDF-SHA256", c.label)
			}
		}
	}
}

func TestHeaderMACIsHMACSHA256(t *testing.T) {
	for _, n := range []int{0, 1, 55, 56, 64, 243, maxBeta} {
		var key [32]byte
		rand.Read(key[:])
		msg := make([]byte, n)
		rand.Read(msg)
		var got [32]byte
		headerMAC(&got, &key, msg)
		want, _ := hkdf.Extract(sha256.New, msg, key[:]) // HMAC(key, msg)
		if string(got[:]) != string(want) {
			t.Fatalf("len %d: headerMAC differs from HMAC-SHA256", n)
		}
	}
}
