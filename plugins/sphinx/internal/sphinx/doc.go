// Package sphinx implements the mixmta Sphinx packet format: creation of
// fixed-size onion packets by a sender and their one-layer-at-a-time
// processing ("unwrapping") by mix nodes.
//
// The construction follows Sphinx (G. Danezis and I. Goldberg, "Sphinx: A
// Compact and Provably Secure Mix Format", IEEE S&P 2009; section numbers
// below refer to that paper):
//
//   - The header carries one blinded group element α (X25519, 32 bytes), the
//     encrypted routing information β (MaxHops fixed-size slots) and a MAC γ
//     (HMAC-SHA256, 32 bytes) over β (§3).
//   - Each hop computes the shared secret s = ECDH(mix key, α), checks γ in
//     constant time before trusting anything else, decrypts β, and re-blinds
//     α' = b·α with a blinding factor b derived from (α, s) (§3).
//   - Paths shorter than MaxHops are padded with the filler strings of §3
//     and with random bytes, so no hop learns its position or the path length.
//   - Packets have the same size (Geometry.PacketSize, 64 KiB by default) at
//     every hop.
//
// Unlike the paper's LIONESS payload (§3), the payload is protected
// by one AES-256-GCM layer per hop whose 16-byte tag is carried in that hop's
// encrypted routing slot: a modified ("tagged") payload is detected and the
// packet dropped at the very next honest hop. plugins/sphinx/SPEC.md gives
// the byte layout, every key-derivation label, the processing steps, the
// rationale for this choice, and the test vectors the tests check.
//
// The package is pure computation: it keeps no state. Replay protection is
// the caller's job: Unwrap returns a 32-byte replay tag per (packet, mix key)
// that the caller must look up and store before acting on the result.
package sphinx
