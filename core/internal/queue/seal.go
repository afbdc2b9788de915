package queue

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
)

// Every value the queue stores about a message (item record, blob meta,
// blob chunk) is sealed with AES-256-GCM (NIST SP 800-38D) under a key that
// belongs to one owner, an item or a blob, and that is destroyed when the
// owner leaves the queue (see keyStore). Whatever badger keeps after a
// delete (memtable, write-ahead log, tables, value log until GC) is then
// ciphertext under a key that no longer exists anywhere.
//
// Sealed value layout (big-endian):
//
//	[4]  magic "mxq1"
//	[16] owner id (item or blob)
//	[4]  part: which value of the owner (partItem, partMeta, chunk index)
//	[4]  length of the ciphertext that follows the nonce (tag included)
//	[12] random nonce
//	[n]  ciphertext and 16-byte tag; the 28 bytes before the nonce are the
//	     additional data, so a value cannot be moved to another owner or part
//
// The header is self-describing on purpose: a forensic scan of raw files
// (see Forensic) can find every sealed value without knowing badger's
// formats, and tests use that to prove nothing opens after delivery.
const (
	sealMagic    = "mxq1"
	sealAADLen   = 4 + 16 + 4 + 4
	sealNonceLen = 12
	sealTagLen   = 16
	// SealOverhead is the bytes sealing adds to a value (56).
	SealOverhead = sealAADLen + sealNonceLen + sealTagLen
	keyLen       = 32
)

// Parts of an owner: its item record, its blob meta record, or a chunk
// index (0 ...).
const (
	partItem uint32 = 0xFFFFFFFF
	partMeta uint32 = 0xFFFFFFFE
)

var errSealed = errors.New("queue: sealed value does not open (key destroyed or value damaged)")

func newAEAD(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // key length is fixed
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

// seal returns plain sealed under key for (owner, part).
func seal(key []byte, owner ID, part uint32, plain []byte) []byte {
	return sealAppend(make([]byte, 0, sealAADLen+sealNonceLen+len(plain)+sealTagLen), key, owner, part, plain)
}

// sealAppend is seal appending the sealed value to dst (a reused buffer:
// the slot store seals a packet where its pwrite reads it).
func sealAppend(dst, key []byte, owner ID, part uint32, plain []byte) []byte {
	start := len(dst)
	dst = append(dst, sealMagic...)
	dst = append(dst, owner[:]...)
	dst = binary.BigEndian.AppendUint32(dst, part)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(plain)+sealTagLen))
	dst = append(dst, make([]byte, sealNonceLen)...)
	h := dst[start:]
	if _, err := rand.Read(h[sealAADLen:]); err != nil {
		panic(err)
	}
	return newAEAD(key).Seal(dst, h[sealAADLen:sealAADLen+sealNonceLen], plain, h[:sealAADLen])
}

// unseal opens a value sealed for (owner, part). Errors: errSealed for a
// wrong key, owner or part, a damaged value or a foreign format.
func unseal(key []byte, owner ID, part uint32, sealed []byte) ([]byte, error) {
	return unsealAppend(nil, key, owner, part, sealed)
}

// unsealAppend is unseal appending the plaintext to dst.
func unsealAppend(dst, key []byte, owner ID, part uint32, sealed []byte) ([]byte, error) {
	o, p, n, ok := sealHeader(sealed)
	if !ok || o != owner || p != part || n != len(sealed)-sealAADLen-sealNonceLen {
		return nil, errSealed
	}
	out, err := newAEAD(key).Open(dst, sealed[sealAADLen:sealAADLen+sealNonceLen], sealed[sealAADLen+sealNonceLen:], sealed[:sealAADLen])
	if err != nil {
		return nil, errSealed
	}
	return out, nil
}

// sealHeader parses a sealed value's header: owner, part and the
// ciphertext length.
func sealHeader(b []byte) (owner ID, part uint32, n int, ok bool) {
	if len(b) < sealAADLen+sealNonceLen+sealTagLen || string(b[:4]) != sealMagic {
		return owner, 0, 0, false
	}
	copy(owner[:], b[4:20])
	part = binary.BigEndian.Uint32(b[20:])
	n = int(binary.BigEndian.Uint32(b[24:]))
	return owner, part, n, n >= sealTagLen
}
