package main

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mixmta/mixmta/sdk"
)

// The Sphinx payload (the data a packet delivers at its last hop, SPEC.md
// §7) starts with a type byte, so that message fragments and loop packets
// are told apart only inside the encrypted payload, never on the wire
// (SPEC.md §14.2):
//
//	fragment  0x01 | message id (16) | index (4, BE) | count (4, BE) | data (>= 1 byte)
//	loop      0x02 | loop id (16, not all zero) | padding (any bytes, ignored)
//
// 0x00 and every other type byte are rejected, so an all-zero or truncated
// payload never passes for a fragment.
const (
	payloadFragment = 0x01
	payloadLoop     = 0x02

	messageIDSize      = 16
	loopIDSize         = 16
	fragmentHeaderSize = 1 + messageIDSize + 4 + 4
	loopHeaderSize     = 1 + loopIDSize
)

// putFragmentHeader writes a fragment's header into dst[:fragmentHeaderSize].
func putFragmentHeader(dst []byte, id [messageIDSize]byte, index, count int) {
	dst[0] = payloadFragment
	copy(dst[1:], id[:])
	binary.BigEndian.PutUint32(dst[1+messageIDSize:], uint32(index))
	binary.BigEndian.PutUint32(dst[1+messageIDSize+4:], uint32(count))
}

// errPayload is wrapped by every parsePayload error.
var errPayload = errors.New("sphinx: malformed exit payload")

// exitPayload is a parsed exit payload: a fragment or a loop id.
type exitPayload struct {
	fragment *sdk.Fragment
	loopID   [loopIDSize]byte
}

// parsePayload parses an exit payload (SPEC.md §14.2). A fragment must have
// 1 <= count <= maxFragments, index < count and at least one data byte; a
// loop id must not be all zero. Fragment.Data aliases p. It never panics.
func parsePayload(p []byte, maxFragments int) (exitPayload, error) {
	var out exitPayload
	if len(p) == 0 {
		return out, fmt.Errorf("%w: empty", errPayload)
	}
	switch p[0] {
	case payloadFragment:
		if len(p) <= fragmentHeaderSize {
			return out, fmt.Errorf("%w: fragment of %d bytes has no data", errPayload, len(p))
		}
		f := &sdk.Fragment{}
		copy(f.MessageID[:], p[1:])
		index := binary.BigEndian.Uint32(p[1+messageIDSize:])
		count := binary.BigEndian.Uint32(p[1+messageIDSize+4:])
		if count == 0 || uint64(count) > uint64(maxFragments) {
			return out, fmt.Errorf("%w: fragment count %d outside 1..%d (max_message_bytes)", errPayload, count, maxFragments)
		}
		if index >= count {
			return out, fmt.Errorf("%w: fragment index %d of %d", errPayload, index, count)
		}
		f.Index, f.Count = int(index), int(count)
		f.Data = p[fragmentHeaderSize:len(p):len(p)]
		out.fragment = f
	case payloadLoop:
		if len(p) < loopHeaderSize {
			return out, fmt.Errorf("%w: loop payload of %d bytes", errPayload, len(p))
		}
		copy(out.loopID[:], p[1:])
		if out.loopID == ([loopIDSize]byte{}) {
			return out, fmt.Errorf("%w: zero loop id", errPayload)
		}
	default:
		return out, fmt.Errorf("%w: unknown payload type %#02x", errPayload, p[0])
	}
	return out, nil
}
