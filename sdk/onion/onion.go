// Package onion handles Tor v3 onion service addresses (rend-spec-v3
// §6, "Encoding onion addresses"): 56 base32 characters encoding
// PUBKEY (32 bytes, ed25519) | CHECKSUM (2 bytes) | VERSION (1 byte, 3),
// where CHECKSUM = SHA3-256(".onion checksum" | PUBKEY | VERSION)[:2].
package onion

import (
	"crypto/ed25519"
	"crypto/sha3"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
)

// Suffix ends every onion host name.
const Suffix = ".onion"

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Errors of Parse.
var (
	// ErrNotOnion: the name does not end in ".onion".
	ErrNotOnion = errors.New("not an .onion name")
	// ErrV2: a 16-character v2 address; Tor removed v2 onion services in
	// 0.4.6 (2021), they cannot be reached.
	ErrV2 = errors.New("v2 onion address (16 characters): v2 onion services no longer exist, only v3 (56 characters)")
	// ErrMalformed: wrong length, bad base32, wrong version or checksum.
	ErrMalformed = errors.New("malformed v3 onion address")
)

// Address returns the v3 onion host name ("<56 chars>.onion", lower case)
// of an ed25519 public key.
func Address(pub ed25519.PublicKey) string {
	buf := make([]byte, 0, 35)
	buf = append(buf, pub...)
	buf = append(buf, checksum(pub)...)
	buf = append(buf, 3)
	return strings.ToLower(b32.EncodeToString(buf)) + Suffix
}

func checksum(pub []byte) []byte {
	h := sha3.New256()
	h.Write([]byte(".onion checksum"))
	h.Write(pub)
	h.Write([]byte{3})
	return h.Sum(nil)[:2]
}

// Parse validates a host name as a v3 onion address: case-insensitive,
// an optional trailing dot, and subdomains ("mail.<56>.onion", which Tor
// connects to the same service) allowed. It returns the canonical
// address ("<56 lower-case chars>.onion") and the service's public key.
// Errors wrap ErrNotOnion, ErrV2 or ErrMalformed and say what is wrong.
func Parse(host string) (string, ed25519.PublicKey, error) {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if !strings.HasSuffix(h, Suffix) {
		return "", nil, ErrNotOnion
	}
	labels := strings.Split(strings.TrimSuffix(h, Suffix), ".")
	id := labels[len(labels)-1]
	switch len(id) {
	case 16:
		return "", nil, ErrV2
	case 56:
	default:
		return "", nil, fmt.Errorf("%w: %d characters before .onion, want 56", ErrMalformed, len(id))
	}
	raw, err := b32.DecodeString(strings.ToUpper(id))
	if err != nil {
		return "", nil, fmt.Errorf("%w: not base32", ErrMalformed)
	}
	pub, sum, ver := raw[:32], raw[32:34], raw[34]
	if ver != 3 {
		return "", nil, fmt.Errorf("%w: version byte %d, want 3", ErrMalformed, ver)
	}
	if want := checksum(pub); sum[0] != want[0] || sum[1] != want[1] {
		return "", nil, fmt.Errorf("%w: checksum mismatch (a mistyped address)", ErrMalformed)
	}
	return id + Suffix, ed25519.PublicKey(pub), nil
}

// IsOnion reports whether host ends in ".onion" (valid or not).
func IsOnion(host string) bool {
	return strings.HasSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), Suffix)
}
