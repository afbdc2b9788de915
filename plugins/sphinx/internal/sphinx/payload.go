package sphinx

import (
	"bytes"
	"encoding/binary"
)

// The innermost payload layer (what the exit hop obtains after removing its
// AES-GCM layer) is exactly payloadRegion bytes:
//
//	length n (4 bytes, big-endian) | data (n bytes) | zero padding
//
// with 0 <= n <= payloadRegion-4. The padding is all zero; the exit rejects
// anything else with ErrBadPayload. It is never visible on the wire: every
// hop's layer encrypts it.

// encodePayload writes the innermost layer for data into region, which must
// be exactly the payload region and at least len(data)+4 bytes.
func encodePayload(region, data []byte) {
	binary.BigEndian.PutUint32(region, uint32(len(data)))
	n := copy(region[LengthPrefixSize:], data)
	clear(region[LengthPrefixSize+n:])
}

// zeroes is compared against the padding in chunks (bytes.Equal is
// vectorised; a byte loop over 64 KiB is not).
var zeroes [4096]byte

// decodePayload returns the data inside an innermost layer (a sub-slice of
// region) or ErrBadPayload. It never panics, whatever region holds.
func decodePayload(region []byte) ([]byte, error) {
	if len(region) < LengthPrefixSize {
		return nil, ErrBadPayload
	}
	n := binary.BigEndian.Uint32(region)
	rest := region[LengthPrefixSize:]
	if uint64(n) > uint64(len(rest)) {
		return nil, ErrBadPayload
	}
	data, pad := rest[:n:n], rest[n:]
	for len(pad) > 0 {
		c := min(len(pad), len(zeroes))
		if !bytes.Equal(pad[:c], zeroes[:c]) {
			return nil, ErrBadPayload
		}
		pad = pad[c:]
	}
	return data, nil
}
