package sphinx

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/binary"
	"encoding/hex"
	"os"
	"testing"
)

// TestKEMVectorFromSpecAlone checks that SPEC.md §15 is enough to process
// the committed vector without this package or crypto/hpke: hop 0's γ and
// replay tag are recomputed from the text of §15.1 and §3 with the
// standard library's primitives only (X-Wing decapsulation written out
// from draft-connolly-cfrg-xwing-kem, the HPKE Base-mode key schedule and
// exporter from RFC 9180 §5.1 and §5.3 with the suite named there:
// MLKEM768-X25519 = 0x647a (draft-ietf-hpke-pq), HKDF-SHA256 = 0x0001,
// export-only = 0xffff).
func TestKEMVectorFromSpecAlone(t *testing.T) {
	pkt, err := os.ReadFile(kemVectorFile)
	if err != nil {
		t.Fatal(err)
	}
	const P, r, t1, ctSize = 8192, 5, 1201, 1120
	L := P - (ctSize + r*t1 + 32)
	alpha := pkt[L : L+ctSize]
	beta := pkt[L+ctSize : L+ctSize+r*t1]
	gamma := pkt[L+ctSize+r*t1:]

	// Hop 0 is test node 4 (§15.7): its X-Wing seed, expanded (X-Wing
	// §5.2) into ML-KEM-768's (d, z) and X25519's scalar.
	seed := sha256.Sum256([]byte("mixmta-sphinx-kem-v1 test node key 4"))
	expanded := sha3.SumSHAKE256(seed[:], 96)
	dk, err := mlkem.NewDecapsulationKey768(expanded[:64])
	if err != nil {
		t.Fatal(err)
	}
	skX, err := ecdh.X25519().NewPrivateKey(expanded[64:96])
	if err != nil {
		t.Fatal(err)
	}
	pkX := skX.PublicKey().Bytes()
	if got := sha256.Sum256(append(dk.EncapsulationKey().Bytes(), pkX...)); hex.EncodeToString(got[:]) != kemVector.pubs[4] {
		t.Fatalf("test node 4's public key (ML-KEM ‖ X25519) hashes to %x, §15.7 says %s", got, kemVector.pubs[4])
	}

	// X-Wing decapsulation (§15.1): ss = SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ label).
	ssM, err := dk.Decapsulate(alpha[:1088])
	if err != nil {
		t.Fatal(err)
	}
	ctX, err := ecdh.X25519().NewPublicKey(alpha[1088:])
	if err != nil {
		t.Fatal(err)
	}
	ssX, err := skX.ECDH(ctX)
	if err != nil {
		t.Fatal(err)
	}
	h := sha3.New256()
	for _, b := range [][]byte{ssM, ssX, alpha[1088:], pkX, []byte(`\./` + `/^\`)} {
		h.Write(b)
	}
	ss := h.Sum(nil)

	// RFC 9180 §5.1 (Base mode, no PSK) and §5.3, info and exporter
	// context from §15.1.
	suite := []byte("HPKE\x64\x7a\x00\x01\xff\xff")
	extract := func(salt []byte, label string, ikm []byte) []byte {
		in := append(append(append([]byte("HPKE-v1"), suite...), label...), ikm...)
		out, err := hkdf.Extract(sha256.New, in, salt)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	expand := func(prk []byte, label string, info []byte, n int) []byte {
		in := binary.BigEndian.AppendUint16(nil, uint16(n))
		in = append(append(append(append(in, "HPKE-v1"...), suite...), label...), info...)
		out, err := hkdf.Expand(sha256.New, prk, string(in), n)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ctx := append(append([]byte{0}, extract(nil, "psk_id_hash", nil)...), extract(nil, "info_hash", []byte("mixmta-sphinx-kem-v1"))...)
	secret := extract(ss, "secret", nil)
	exporter := expand(secret, "exp", ctx, 32)
	s := expand(exporter, "sec", []byte("mixmta-sphinx-kem-v1 hop secret"), 32)

	// §15.1 and §3: PRK = HKDF-Extract(SHA-256(α), s), keys by label.
	salt := sha256.Sum256(alpha)
	prk, err := hkdf.Extract(sha256.New, s, salt[:])
	if err != nil {
		t.Fatal(err)
	}
	key := func(label string) []byte {
		k, err := hkdf.Expand(sha256.New, prk, label, 32)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	m := hmac.New(sha256.New, key("mixmta-sphinx-v1 header mac"))
	m.Write(beta)
	if !hmac.Equal(m.Sum(nil), gamma) {
		t.Fatal("γ of hop 0 does not verify with the keys §15.1 describes")
	}
	if got := hex.EncodeToString(key("mixmta-sphinx-v1 replay")); got != kemVector.tags[0] {
		t.Fatalf("hop 0 replay tag from the SPEC alone %s, §15.7 says %s", got, kemVector.tags[0])
	}
}
