package sphinx

import (
	"crypto/hmac"

	"github.com/mixmta/mixmta/sdk/mixkey"
)

// Unwrap processes packet at a mix node whose X25519 mix private key for the
// packet's epoch is priv (Sphinx §3 plus the payload layer, SPEC.md §6).
//
// Steps, in order: size check; s = X25519(priv, α); key derivation from
// (α, s); constant-time check of γ over β (nothing else is trusted before
// this passes); decryption of β and of this hop's routing slot; check of this
// hop's payload layer against the tag in the slot; then, for Forward,
// re-blinding of α and shifting of β.
//
// Ownership: Unwrap works in place. On success, Result.Packet (Forward) and
// Result.Payload (Exit) alias packet; the caller must not reuse packet while
// it uses them. On error, packet is unchanged, except after ErrPayloadAuth
// and ErrBadPayload, when its contents are unspecified: a caller holding
// several epoch keys can retry the same buffer with the next key after
// ErrBadMAC. Pass a copy if the original bytes are still needed.
//
// Replay: the caller must check Result.ReplayTag against the tags it has
// seen under priv and drop a repeat before acting on the result.
//
// Errors: ErrBadGeometry, ErrBadSize (len(packet) != g.PacketSize), ErrBadKey
// (priv is nil), ErrBadMAC (header modified, wrong key or
// wrong geometry), ErrBadRouting, ErrPayloadAuth (payload tagged),
// ErrBadPayload (malformed exit payload). Unwrap never panics on any packet
// content and is safe for concurrent use with distinct packet buffers.
//
// Cost: two X25519-size scalar multiplications (the ECDH and the blinding;
// none is computed for Exit and Drop beyond the ECDH), one AES-256-GCM
// decryption of the payload, and a few hashes over less than 1 KiB.
//
// priv is used in place (mixkey.Key.ECDH): Unwrap leaves no copy of the
// private key behind, so a key wiped at retirement is gone.
func Unwrap(g Geometry, priv *mixkey.Key, packet []byte) (*Result, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if len(packet) != g.PacketSize {
		return nil, ErrBadSize
	}
	if priv == nil {
		return nil, ErrBadKey
	}
	const t = SlotSize
	R := g.betaSize()
	L := g.payloadRegion()
	hdr := packet[L:]
	var alpha [GroupElementSize]byte
	copy(alpha[:], hdr)
	beta := hdr[GroupElementSize : GroupElementSize+R]
	gamma := hdr[GroupElementSize+R:]

	// s = X25519(y, α); an all-zero s comes from a low-order α, a
	// tampered header.
	var s [32]byte
	if !priv.ECDH(&s, &alpha) {
		return nil, ErrBadMAC
	}
	var k hopKeys
	deriveKeys(&k, &alpha, &s)
	clear(s[:])

	// γ check, constant time, before anything else is used.
	var mac [MACSize]byte
	headerMAC(&mac, &k.mac, beta)
	if !hmac.Equal(mac[:], gamma) {
		return nil, ErrBadMAC
	}

	// Decrypt β ‖ 0^t: the first slot is ours, the rest is the next β.
	var buf [maxBeta + SlotSize]byte
	b := buf[:R+t]
	copy(b, beta)
	xorStream(&k.stream, b)
	slot := b[:t]
	cmd, err := checkSlot(slot)
	if err != nil {
		return nil, err
	}

	// Payload layer: AES-256-GCM with the tag from our slot. The tag is put
	// right after the payload region, over the spent α, so that the layer is
	// opened in place without copying the payload.
	copy(hdr[:PayloadTagSize], slot[slotTag:slotTag+PayloadTagSize])
	if _, err := payloadAEAD(&k.payload).Open(packet[:0], payloadNonce[:], packet[:L+PayloadTagSize], nil); err != nil {
		return nil, ErrPayloadAuth
	}

	res := &Result{Action: cmd, ReplayTag: k.replay}
	switch cmd {
	case Forward:
		// α' = b·α (§3), β' = shifted β, γ' from our slot.
		var next [GroupElementSize]byte
		x25519(&next, &k.blind, &alpha)
		copy(hdr, next[:])
		copy(hdr[GroupElementSize:], b[t:t+R])
		copy(hdr[GroupElementSize+R:], slot[slotGamma:slotTag])
		copy(res.Next[:], slot[slotNext:slotGamma])
		res.Packet = packet
	case Exit:
		data, err := decodePayload(packet[:L])
		if err != nil {
			return nil, err
		}
		res.Payload = data
	case Drop:
	}
	return res, nil
}

// checkSlot returns the command of a decrypted routing slot (SlotSize bytes),
// or ErrBadRouting if the command is unknown or, for Exit and Drop, the unused
// fields (next node id, next γ) are not zero. It runs after the header MAC
// check, so what it reveals is known to the sender only.
func checkSlot(slot []byte) (Command, error) {
	cmd := Command(slot[slotCmd])
	switch cmd {
	case Forward:
		return cmd, nil
	case Exit, Drop:
		for _, c := range slot[slotNext:slotTag] {
			if c != 0 {
				return 0, ErrBadRouting
			}
		}
		return cmd, nil
	}
	return 0, ErrBadRouting
}
