package sphinx

import (
	"crypto/hmac"
	"crypto/hpke"
	"crypto/sha256"
	"fmt"
	"io"
)

// The KEM format (SPEC.md §15): Sphinx with a hybrid post-quantum KEM in
// place of the blinded group element, following the KEM Sphinx
// construction of D. Stainton, "Post Quantum Sphinx" (IACR ePrint
// 2023/1960), as Katzenpost ships it. A KEM public key cannot be blinded, so
// the header carries the current hop's KEM ciphertext where the X25519
// format carries α, and every routing slot carries the next hop's
// ciphertext. The KEM is X-Wing, ML-KEM-768 (FIPS 203) combined with X25519
// (draft-connolly-cfrg-xwing-kem; MLKEM768-X25519 of draft-ietf-hpke-pq, Go's
// crypto/hpke.MLKEM768X25519): its shared secret is SHA3-256(ss_ML-KEM ‖
// ss_X25519 ‖ ct_X25519 ‖ pk_X25519 ‖ label), secure while either
// component is.
const (
	// KEMCiphertextSize is the size of one X-Wing ciphertext: the ML-KEM-768
	// ciphertext (1088) then the X25519 ephemeral public key (32).
	KEMCiphertextSize = 1120
	// KEMPublicKeySize is the size of an X-Wing public key: the ML-KEM-768
	// encapsulation key (1184) then the X25519 public key (32).
	KEMPublicKeySize = 1216
	// KEMSeedSize is the size of an X-Wing private key: a 32-byte seed
	// that SHAKE256 expands into both private keys.
	KEMSeedSize = 32
	// KEMSlotSize is the size of one routing slot of the KEM format:
	// command (1) | next node id (32) | next γ (32) | payload tag (16) |
	// next hop's KEM ciphertext (1120).
	KEMSlotSize = SlotSize + KEMCiphertextSize

	slotNextCT = SlotSize // offset of the next ciphertext in a KEM slot

	// kemInfo is the HPKE info, and kemExport the exporter context that
	// yields a hop's 32-byte secret s (RFC 9180 §5.3). They are the KEM
	// format's domain separation: s, and so every key derived from it with
	// the labels of SPEC.md §3, differs from anything the X25519 format
	// computes.
	kemInfo   = "mixmta-sphinx-kem-v1"
	kemExport = "mixmta-sphinx-kem-v1 hop secret"

	maxKEMBeta = MaxHopsLimit * KEMSlotSize
)

// kemSuite is the HPKE suite whose key schedule turns an X-Wing shared
// secret into s: X-Wing, HKDF-SHA256, export only (no HPKE encryption).
var kemSuite = struct {
	kem  hpke.KEM
	kdf  hpke.KDF
	aead hpke.AEAD
}{hpke.MLKEM768X25519(), hpke.HKDFSHA256(), hpke.ExportOnly()}

// KEMGeometry fixes the shape of every packet of a mixnet that uses the KEM
// format. Layout (SPEC.md §15.2): payload (PacketSize-HeaderSize bytes) |
// α, the hop's KEM ciphertext (1120) | β (MaxHops*KEMSlotSize) | γ (32).
type KEMGeometry struct {
	// PacketSize is the total size of a packet in bytes, header included,
	// identical at every hop. Default 65536.
	PacketSize int
	// MaxHops is the maximum path length, 1..MaxHopsLimit. Default 3.
	MaxHops int
}

// DefaultKEMGeometry is 65536-byte packets of at most 3 hops: a 4,755-byte
// header and 60,777 payload bytes per packet.
func DefaultKEMGeometry() KEMGeometry {
	return KEMGeometry{PacketSize: DefaultPacketSize, MaxHops: DefaultMaxHops}
}

// HeaderSize is 1120 + MaxHops*1201 + 32 bytes. It does not validate g.
func (g KEMGeometry) HeaderSize() int {
	return KEMCiphertextSize + g.MaxHops*KEMSlotSize + MACSize
}

// PayloadSize is the number of application bytes a packet carries: the
// payload region minus the 4-byte length prefix.
func (g KEMGeometry) PayloadSize() int { return g.payloadRegion() - LengthPrefixSize }

func (g KEMGeometry) payloadRegion() int { return g.PacketSize - g.HeaderSize() }

// Validate reports whether g is usable, as Geometry.Validate. The error
// wraps ErrBadGeometry.
func (g KEMGeometry) Validate() error {
	if g.MaxHops < 1 || g.MaxHops > MaxHopsLimit {
		return fmt.Errorf("%w: MaxHops %d not in 1..%d", ErrBadGeometry, g.MaxHops, MaxHopsLimit)
	}
	if g.PacketSize > MaxPacketSize {
		return fmt.Errorf("%w: PacketSize %d exceeds %d", ErrBadGeometry, g.PacketSize, MaxPacketSize)
	}
	if min := g.HeaderSize() + LengthPrefixSize + 1; g.PacketSize < min {
		return fmt.Errorf("%w: PacketSize %d below the minimum %d for %d hops", ErrBadGeometry, g.PacketSize, min, g.MaxHops)
	}
	return nil
}

// KEMHop is one node of a path of the KEM format.
type KEMHop struct {
	// NodeID identifies the node to the previous hop (32 bytes).
	NodeID [NodeIDSize]byte
	// MixKey is the node's X-Wing public key for the packet's epoch, parsed
	// once with ParseKEMPublicKey (parsing expands the ML-KEM matrix, about
	// a third of an encapsulation: keep parsed keys for the epoch).
	MixKey hpke.PublicKey
}

// ParseKEMPublicKey parses a 1216-byte X-Wing public key (ML-KEM-768
// encapsulation key ‖ X25519 public key). Errors: ErrBadKey (wrong length
// or an invalid ML-KEM key).
func ParseKEMPublicKey(b []byte) (hpke.PublicKey, error) {
	if len(b) != KEMPublicKeySize {
		return nil, fmt.Errorf("%w: X-Wing public key is %d bytes, want %d", ErrBadKey, len(b), KEMPublicKeySize)
	}
	k, err := kemSuite.kem.NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return k, nil
}

// NewKEMPrivateKey returns the X-Wing private key of a 32-byte seed (the
// form a mix keeps on disk) and its 1216-byte public key encoding. Errors:
// a seed of another length (ErrBadKey).
func NewKEMPrivateKey(seed []byte) (hpke.PrivateKey, []byte, error) {
	if len(seed) != KEMSeedSize {
		return nil, nil, fmt.Errorf("%w: X-Wing seed is %d bytes, want %d", ErrBadKey, len(seed), KEMSeedSize)
	}
	k, err := kemSuite.kem.NewPrivateKey(seed)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return k, k.PublicKey().Bytes(), nil
}

// kemKeys is one hop's secret: the HPKE exporter output for (ciphertext,
// key), and the keys of SPEC.md §3 derived from it with salt
// SHA-256(ciphertext).
func kemKeys(k *hopKeys, ct []byte, export func(string, int) ([]byte, error)) error {
	sec, err := export(kemExport, 32)
	if err != nil {
		return err
	}
	var s [32]byte
	copy(s[:], sec)
	clear(sec)
	salt := sha256.Sum256(ct)
	deriveKeys(k, &salt, &s)
	clear(s[:])
	return nil
}

// NewKEMPacket creates a packet of the KEM format that travels along path
// and ends with final (Exit or Drop), as NewPacket does for the X25519
// format. rand supplies the routing padding: NewKEMPacket reads exactly
// (g.MaxHops-len(path))*KEMSlotSize bytes from it. The KEM encapsulations
// draw their randomness from crypto/rand (the HPKE API takes no reader).
//
// Errors: ErrBadGeometry, ErrBadPath, ErrBadCommand, ErrPayloadTooLarge,
// ErrBadKey (a nil MixKey or one of another KEM), or the error of rand
// (wrapped).
//
// Cost: per hop one X-Wing encapsulation (ML-KEM-768 encapsulation, two
// X25519 multiplications) and one AES-256-GCM pass over the payload.
func NewKEMPacket(g KEMGeometry, path []KEMHop, final Command, payload []byte, rand io.Reader) ([]byte, error) {
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
		if path[i].MixKey == nil || path[i].MixKey.KEM().ID() != kemSuite.kem.ID() {
			return nil, fmt.Errorf("%w: hop %d: not an X-Wing public key", ErrBadKey, i)
		}
	}
	pkt := make([]byte, g.PacketSize)
	encodePayload(pkt[:g.payloadRegion()], payload)
	if err := buildKEM(g, path, final, pkt, rand); err != nil {
		return nil, err
	}
	return pkt, nil
}

// buildKEM turns pkt, whose payload region holds the innermost layer, into
// a packet for path (SPEC.md §15.4).
func buildKEM(g KEMGeometry, path []KEMHop, final Command, pkt []byte, rand io.Reader) error {
	const t = KEMSlotSize
	n := len(path)
	R := g.MaxHops * t
	L := g.payloadRegion()

	var work [maxKEMBeta]byte
	padLen := (g.MaxHops - n) * t
	if _, err := io.ReadFull(rand, work[t:t+padLen]); err != nil {
		return fmt.Errorf("sphinx: reading randomness: %w", err)
	}

	var (
		keys [MaxHopsLimit]hopKeys
		cts  [MaxHopsLimit][]byte
		rho  [MaxHopsLimit][maxKEMBeta + KEMSlotSize]byte
	)
	for i := 0; i < n; i++ {
		ct, s, err := hpke.NewSender(path[i].MixKey, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
		if err != nil {
			return fmt.Errorf("%w: hop %d: %v", ErrBadKey, i, err)
		}
		if err := kemKeys(&keys[i], ct, s.Export); err != nil {
			return fmt.Errorf("sphinx: hop %d: %w", i, err)
		}
		cts[i] = ct
		xorStream(&keys[i].stream, rho[i][:R+t])
	}

	// Filler, as in SPEC.md §5 step 3 with the KEM slot size.
	var phi [maxKEMBeta]byte
	phiLen := 0
	for i := 0; i < n-1; i++ {
		phiLen += t
		xorBytes(phi[:phiLen], rho[i][R+t-phiLen:R+t])
	}

	var tags [MaxHopsLimit][PayloadTagSize]byte
	for i := n - 1; i >= 0; i-- {
		sealed := payloadAEAD(&keys[i].payload).Seal(pkt[:0], payloadNonce[:], pkt[:L], nil)
		copy(tags[i][:], sealed[L:])
	}

	var gamma [MACSize]byte
	writeKEMSlot(work[:t], final, nil, nil, &tags[n-1], nil)
	head := R - phiLen
	xorBytes(work[:head], rho[n-1][:head])
	copy(work[head:R], phi[:phiLen])
	kemMAC(&gamma, &keys[n-1].mac, work[:R])
	for i := n - 2; i >= 0; i-- {
		copy(work[t:R], work[:R-t])
		writeKEMSlot(work[:t], Forward, &path[i+1].NodeID, &gamma, &tags[i], cts[i+1])
		xorBytes(work[:R], rho[i][:R])
		kemMAC(&gamma, &keys[i].mac, work[:R])
	}

	copy(pkt[L:], cts[0])
	copy(pkt[L+KEMCiphertextSize:], work[:R])
	copy(pkt[L+KEMCiphertextSize+R:], gamma[:])
	clear(keys[:])
	clear(rho[:])
	return nil
}

// writeKEMSlot writes a plaintext KEM routing slot (SPEC.md §15.3); next,
// gamma and ct are nil (zeros) for Exit and Drop.
func writeKEMSlot(slot []byte, cmd Command, next *[NodeIDSize]byte, gamma *[MACSize]byte, tag *[PayloadTagSize]byte, ct []byte) {
	writeSlot(slot[:SlotSize], cmd, next, gamma, tag)
	if ct != nil {
		copy(slot[slotNextCT:], ct)
	} else {
		clear(slot[slotNextCT:KEMSlotSize])
	}
}

// kemMAC is γ = HMAC-SHA256(key, β) over the KEM format's larger β.
func kemMAC(out *[MACSize]byte, key *[32]byte, beta []byte) {
	m := hmac.New(sha256.New, key[:])
	m.Write(beta)
	m.Sum(out[:0])
}

// UnwrapKEM processes a packet of the KEM format at a mix node whose X-Wing
// private key for the packet's epoch is priv (SPEC.md §15.5). It follows
// Unwrap step for step, with decapsulation of α in place of the ECDH and
// the next hop's ciphertext, taken from the slot, in place of the
// re-blinding. Ownership, replay and error contract are Unwrap's: ErrBadKey
// for a nil or non-X-Wing key, ErrBadMAC for any change to α, β or γ (a
// modified ciphertext decapsulates to an unrelated secret: ML-KEM's
// implicit rejection), ErrBadRouting, ErrPayloadAuth, ErrBadPayload.
//
// Cost: one X-Wing decapsulation (ML-KEM-768 decapsulation, one X25519),
// one AES-256-GCM decryption of the payload, an HMAC over β.
func UnwrapKEM(g KEMGeometry, priv hpke.PrivateKey, packet []byte) (*Result, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if len(packet) != g.PacketSize {
		return nil, ErrBadSize
	}
	if priv == nil || priv.KEM().ID() != kemSuite.kem.ID() {
		return nil, ErrBadKey
	}
	const t = KEMSlotSize
	R := g.MaxHops * t
	L := g.payloadRegion()
	hdr := packet[L:]
	ct := hdr[:KEMCiphertextSize]
	beta := hdr[KEMCiphertextSize : KEMCiphertextSize+R]
	gamma := hdr[KEMCiphertextSize+R:]

	r, err := hpke.NewRecipient(ct, priv, kemSuite.kdf, kemSuite.aead, []byte(kemInfo))
	if err != nil {
		// Only the X25519 half can fail (a low-order point): a tampered
		// header, like any other change to α.
		return nil, ErrBadMAC
	}
	var k hopKeys
	if err := kemKeys(&k, ct, r.Export); err != nil {
		return nil, ErrBadMAC
	}

	var mac [MACSize]byte
	kemMAC(&mac, &k.mac, beta)
	if !hmac.Equal(mac[:], gamma) {
		return nil, ErrBadMAC
	}

	var buf [maxKEMBeta + KEMSlotSize]byte
	b := buf[:R+t]
	copy(b, beta)
	xorStream(&k.stream, b)
	slot := b[:t]
	cmd, err := checkSlot(slot[:SlotSize])
	if err != nil {
		return nil, err
	}
	if cmd != Forward {
		for _, c := range slot[slotNextCT:] {
			if c != 0 {
				return nil, ErrBadRouting
			}
		}
	}

	// The ciphertext is spent: the tag goes over it, after the payload
	// region, and the layer is opened in place.
	copy(hdr[:PayloadTagSize], slot[slotTag:slotTag+PayloadTagSize])
	if _, err := payloadAEAD(&k.payload).Open(packet[:0], payloadNonce[:], packet[:L+PayloadTagSize], nil); err != nil {
		return nil, ErrPayloadAuth
	}

	res := &Result{Action: cmd, ReplayTag: k.replay}
	switch cmd {
	case Forward:
		copy(hdr, slot[slotNextCT:])
		copy(hdr[KEMCiphertextSize:], b[t:t+R])
		copy(hdr[KEMCiphertextSize+R:], slot[slotGamma:slotTag])
		copy(res.Next[:], slot[slotNext:slotGamma])
		res.Packet = packet
	case Exit:
		data, err := decodePayload(packet[:L])
		if err != nil {
			return nil, err
		}
		res.Payload = data
	}
	return res, nil
}
