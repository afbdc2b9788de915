package sphinx

import (
	"crypto/subtle"
	"fmt"
	"io"

	"filippo.io/edwards25519"
)

// NewPacket creates a Sphinx packet that travels along path and ends with
// final (Exit: the last hop delivers payload; Drop: the last hop discards the
// packet, for cover traffic). The sender sends the result, exactly
// g.PacketSize bytes, to path[0].
//
// path has 1..g.MaxHops hops; a shorter path is padded (filler strings of
// Sphinx §3 plus random bytes) so that no hop can tell its position or the
// path length. payload has 0..g.PayloadSize() bytes and is returned exactly
// by Unwrap at the exit.
//
// rand supplies the secrets: NewPacket reads exactly 32 bytes (the sender's
// ephemeral X25519 private key x) and then (g.MaxHops-len(path))*SlotSize
// bytes (routing padding). Use crypto/rand.Reader; a deterministic reader is
// for test vectors only.
//
// Errors: ErrBadGeometry, ErrBadPath, ErrBadCommand, ErrPayloadTooLarge,
// ErrBadKey (a MixKey is not 32 bytes or is a low-order point), or the error
// of rand (wrapped).
//
// Cost: per hop one fixed-base and one variable-base scalar multiplication
// and one AES-256-GCM pass over the payload (SPEC.md §4, §11).
func NewPacket(g Geometry, path []Hop, final Command, payload []byte, rand io.Reader) ([]byte, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	n := len(path)
	if n < 1 || n > g.MaxHops {
		return nil, fmt.Errorf("%w: %d hops, geometry allows 1..%d", ErrBadPath, n, g.MaxHops)
	}
	if final != Exit && final != Drop {
		return nil, ErrBadCommand
	}
	if len(payload) > g.PayloadSize() {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrPayloadTooLarge, len(payload), g.PayloadSize())
	}
	for i := range path {
		if len(path[i].MixKey) != GroupElementSize {
			return nil, fmt.Errorf("%w: hop %d: mix key is %d bytes, want %d", ErrBadKey, i, len(path[i].MixKey), GroupElementSize)
		}
	}

	pkt := make([]byte, g.PacketSize)
	encodePayload(pkt[:g.payloadRegion()], payload)
	if err := build(g, path, final, pkt, rand); err != nil {
		return nil, err
	}
	return pkt, nil
}

// build turns pkt, whose payload region holds the innermost payload layer,
// into a packet for path ending with final. Arguments other than rand's
// output are not checked (NewPacket does that; tests use build directly to
// make authentic but malformed packets).
func build(g Geometry, path []Hop, final Command, pkt []byte, rand io.Reader) error {
	const t = SlotSize
	n := len(path)
	r := g.MaxHops
	R := g.betaSize()
	L := g.payloadRegion()

	// The sender's secret x (an X25519 private key), then the random padding
	// of the last hop's β.
	var seed [32]byte
	if _, err := io.ReadFull(rand, seed[:]); err != nil {
		return fmt.Errorf("sphinx: reading randomness: %w", err)
	}
	var X edwards25519.Scalar // X_i = clamp(x)·clamp(b_0)···clamp(b_{i-1}) mod ℓ
	mustClamp(&X, &seed)
	clear(seed[:])
	var work [maxBeta]byte
	padLen := (r - n) * t
	if _, err := io.ReadFull(rand, work[t:t+padLen]); err != nil {
		return fmt.Errorf("sphinx: reading randomness: %w", err)
	}

	// Per-hop secrets (Sphinx §3, SPEC.md §4): α_i = X_i·B, s_i = X_i·Y_i,
	// X_{i+1} = X_i·clamp(b_i) mod ℓ. One fixed-base and one variable-base
	// multiplication per hop.
	var (
		keys   [MaxHopsLimit]hopKeys
		alpha0 [GroupElementSize]byte
		rho    [MaxHopsLimit][maxBeta + SlotSize]byte
	)
	for i := 0; i < n; i++ {
		var alpha, y, s [32]byte
		scalarBaseMult(&alpha, &X)
		if i == 0 {
			alpha0 = alpha
		}
		copy(y[:], path[i].MixKey)
		scalarMult(&s, &X, &y)
		if isZero32(&s) {
			return fmt.Errorf("%w: hop %d: mix key is a low-order point", ErrBadKey, i)
		}
		deriveKeys(&keys[i], &alpha, &s)
		clear(s[:])
		var b edwards25519.Scalar
		mustClamp(&b, &keys[i].blind)
		X.Multiply(&X, &b)
		xorStream(&keys[i].stream, rho[i][:R+t]) // ρ_i: keystream of R+t bytes
	}
	X = edwards25519.Scalar{}

	// Filler (§3): φ_0 = ε, φ_{i+1} = (φ_i ‖ 0^t) ⊕ ρ_i[R-i·t : R+t].
	// φ_{n-1} is what hops 0..n-2 will have shifted into the tail of β by the
	// time the packet reaches the last hop.
	var phi [maxBeta]byte
	phiLen := 0
	for i := 0; i < n-1; i++ {
		phiLen += t
		xorBytes(phi[:phiLen], rho[i][R+t-phiLen:R+t])
	}

	// Payload layers, innermost (last hop) first: C_{n-1} = AES-GCM_{k_{n-1}}(M),
	// C_i = AES-GCM_{k_i}(C_{i+1}). Each tag goes into hop i's routing slot, so
	// the payload region keeps its size. Sealing in place uses the header
	// area as room for the tag before the header is written.
	var tags [MaxHopsLimit][PayloadTagSize]byte
	for i := n - 1; i >= 0; i-- {
		sealed := payloadAEAD(&keys[i].payload).Seal(pkt[:0], payloadNonce[:], pkt[:L], nil)
		copy(tags[i][:], sealed[L:])
	}

	// Routing information, last hop first.
	// β_{n-1} = ({slot_{n-1} ‖ random padding} ⊕ ρ_{n-1}[0:(r-n+1)t]) ‖ φ_{n-1}
	// β_i     = {slot_i ‖ β_{i+1}[0:R-t]} ⊕ ρ_i[0:R]
	// γ_i     = HMAC-SHA256(mac key_i, β_i)
	var gamma [MACSize]byte
	writeSlot(work[:t], final, nil, nil, &tags[n-1])
	head := R - phiLen // (r-n+1)·t
	xorBytes(work[:head], rho[n-1][:head])
	copy(work[head:R], phi[:phiLen])
	headerMAC(&gamma, &keys[n-1].mac, work[:R])
	for i := n - 2; i >= 0; i-- {
		copy(work[t:R], work[:R-t])
		writeSlot(work[:t], Forward, &path[i+1].NodeID, &gamma, &tags[i])
		xorBytes(work[:R], rho[i][:R])
		headerMAC(&gamma, &keys[i].mac, work[:R])
	}

	copy(pkt[L:], alpha0[:])
	copy(pkt[L+GroupElementSize:], work[:R])
	copy(pkt[L+GroupElementSize+R:], gamma[:])
	clear(keys[:])
	clear(rho[:])
	return nil
}

// writeSlot writes a plaintext routing slot (SPEC.md §2.1): command | next node
// id | next γ | payload tag. next and gamma are nil (written as zeros) for
// Exit and Drop.
func writeSlot(slot []byte, cmd Command, next *[NodeIDSize]byte, gamma *[MACSize]byte, tag *[PayloadTagSize]byte) {
	slot[slotCmd] = byte(cmd)
	if next != nil {
		copy(slot[slotNext:slotGamma], next[:])
	} else {
		clear(slot[slotNext:slotGamma])
	}
	if gamma != nil {
		copy(slot[slotGamma:slotTag], gamma[:])
	} else {
		clear(slot[slotGamma:slotTag])
	}
	copy(slot[slotTag:SlotSize], tag[:])
}

// xorBytes sets dst[i] ^= src[i] for i < len(dst); len(src) >= len(dst).
func xorBytes(dst, src []byte) {
	subtle.XORBytes(dst, dst, src[:len(dst)])
}

// mustClamp sets s = clamp(k) mod ℓ (RFC 7748 clamping).
func mustClamp(s *edwards25519.Scalar, k *[32]byte) {
	if _, err := s.SetBytesWithClamping(k[:]); err != nil {
		panic("sphinx: internal error: SetBytesWithClamping on 32 bytes failed")
	}
}
