package sphinx

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
)

// HKDF-SHA256 labels (the "info" argument of HKDF-Expand, RFC 5869). Every
// key of a hop is derived from PRK = HKDF-Extract(salt = α, IKM = s), where
// α is the 32-byte group element exactly as it appears in the packet and s
// the 32-byte X25519 shared secret. Binding α into every key makes any change
// to α's encoding (bit 255, which X25519 ignores, a non-canonical value, an
// added low-order component, which clamping removes) fail the header MAC.
const (
	labelHeaderStream = "mixmta-sphinx-v1 header stream" // 32 B: AES-256-CTR key for β (ρ, §3)
	labelHeaderMAC    = "mixmta-sphinx-v1 header mac"    // 32 B: HMAC-SHA256 key for γ (μ, §3)
	labelPayload      = "mixmta-sphinx-v1 payload"       // 32 B: AES-256-GCM key for the payload layer
	labelBlinding     = "mixmta-sphinx-v1 blinding"      // 32 B: X25519 scalar b (h_b, §3)
	labelReplay       = "mixmta-sphinx-v1 replay"        // 32 B: replay tag (h_τ, §3)
)

// hopKeys are the keys of one hop for one packet, derived from (α, s).
type hopKeys struct {
	stream  [32]byte
	mac     [32]byte
	payload [32]byte
	blind   [32]byte
	replay  [32]byte
}

// deriveKeys fills k from the group element alpha and the shared secret s:
// HKDF-SHA256 (RFC 5869) with salt alpha, IKM s, and one 32-byte Expand per
// label. The test checks it against crypto/hkdf.
func deriveKeys(k *hopKeys, alpha, s *[32]byte) {
	var prk [32]byte
	hmacSHA256(&prk, alpha[:], s[:], "", 0)
	// HKDF-Expand to 32 bytes is the single block T(1) = HMAC(PRK, info ‖ 0x01).
	hmacSHA256(&k.stream, prk[:], nil, labelHeaderStream, 1)
	hmacSHA256(&k.mac, prk[:], nil, labelHeaderMAC, 1)
	hmacSHA256(&k.payload, prk[:], nil, labelPayload, 1)
	hmacSHA256(&k.blind, prk[:], nil, labelBlinding, 1)
	hmacSHA256(&k.replay, prk[:], nil, labelReplay, 1)
	clear(prk[:])
}

// hmacMaxMsg bounds the messages hmacSHA256 takes: β of the largest geometry
// or a label with its counter byte.
const hmacMaxMsg = maxBeta

// hmacSHA256 sets out = HMAC-SHA256(key, msg ‖ label ‖ ctr), omitting ctr
// when it is 0. len(key) <= 64 and the message at most hmacMaxMsg bytes. It
// allocates nothing: the message is small, so it is hashed from one stack
// buffer with sha256.Sum256.
func hmacSHA256(out *[32]byte, key, msg []byte, label string, ctr byte) {
	need := len(msg) + len(label)
	if ctr != 0 {
		need++
	}
	if len(key) > sha256.BlockSize || need > hmacMaxMsg {
		panic("sphinx: internal error: hmacSHA256 input too long")
	}
	var buf [sha256.BlockSize + hmacMaxMsg]byte
	var pad [sha256.BlockSize]byte
	copy(pad[:], key)
	for i := range pad {
		buf[i] = pad[i] ^ 0x36
	}
	n := sha256.BlockSize
	n += copy(buf[n:], msg)
	n += copy(buf[n:], label)
	if ctr != 0 {
		buf[n] = ctr
		n++
	}
	inner := sha256.Sum256(buf[:n])
	for i := range pad {
		buf[i] = pad[i] ^ 0x5c
	}
	copy(buf[sha256.BlockSize:], inner[:])
	*out = sha256.Sum256(buf[:sha256.BlockSize+sha256.Size])
	clear(pad[:])
	clear(buf[:n])
}

// headerMAC sets out = HMAC-SHA256(key, beta), the MAC μ of §3.
func headerMAC(out *[MACSize]byte, key *[32]byte, beta []byte) {
	hmacSHA256(out, key[:], beta, "", 0)
}

// xorStream XORs buf with the AES-256-CTR keystream of key (IV all zero),
// the stream cipher ρ of §3.
func xorStream(key *[32]byte, buf []byte) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic("sphinx: internal error: " + err.Error())
	}
	var iv [aes.BlockSize]byte
	cipher.NewCTR(block, iv[:]).XORKeyStream(buf, buf)
}

// payloadNonce is the AES-GCM nonce of every payload layer. Each payload key
// is derived from a fresh (α, s) and seals exactly one plaintext, so a fixed
// nonce is safe (a replayed packet re-seals nothing; it is only re-opened).
var payloadNonce [12]byte

// payloadAEAD returns AES-256-GCM keyed with key (16-byte tag).
func payloadAEAD(key *[32]byte) cipher.AEAD {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic("sphinx: internal error: " + err.Error())
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("sphinx: internal error: " + err.Error())
	}
	return aead
}
