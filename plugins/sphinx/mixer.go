package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// errMalformed is the permanent error class of a packet or reassembled
// message that can never be processed: the core drops and counts it.
func errMalformed(format string, args ...any) error {
	return sdk.Permanent(554, "6.0", format, args...)
}

// Mix unwraps one packet (SPEC.md §6) with this node's own keys. It tries
// each key whose NotAfter has not passed, in keyOrder (current epoch,
// previous, next), until one authenticates the header; a key that fails
// the header MAC leaves the packet untouched, so the next key sees the same
// bytes. packet is not modified (Mix works on a copy; MixInPlace does not).
//
// Results, all with the replay tag and the epoch of the key that worked:
//   - Forward: MixForward with NextHop and the re-wrapped Packet
//     (packet_size bytes);
//   - Exit with a message fragment: MixExit with Fragment (only if this
//     node's own directory entry says exit);
//   - Exit with a loop payload: MixExit with LoopID;
//   - Drop: MixDrop.
//
// Errors: permanent 554 5.6.0 for a packet of the wrong size, one no valid
// key authenticates (tampered header, another node's packet, an expired
// epoch), a tagged payload, an invalid routing slot or exit payload, a
// fragment beyond max_message_bytes or a fragment at a non-exit node;
// temporary 451 4.3.0 before the first MixState or when every own key has
// expired (the core pushes new keys at each epoch change).
func (s *Stage) Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error) {
	return s.MixInPlace(ctx, bytes.Clone(packet))
}

var _ sdk.MixerInPlace = (*Stage)(nil)

// MixInPlace is Mix on buf itself (sdk.MixerInPlace): the unwrap overwrites
// it, and a forward Packet or exit Fragment.Data is part of it.
func (s *Stage) MixInPlace(_ context.Context, buf []byte) (*sdk.MixResult, error) {
	st, err := s.loadState()
	if err != nil {
		return nil, err
	}
	if len(buf) != s.pf.geo.PacketSize {
		return nil, errMalformed("sphinx: packet of %d bytes, packet_size is %d", len(buf), s.pf.geo.PacketSize)
	}
	now := s.now()
	tried := 0
	s.ring.mu.RLock()
	defer s.ring.mu.RUnlock()
	for _, k := range st.keys {
		priv := s.ring.keys[k.epoch]
		if priv == nil || !now.Before(k.notAfter) {
			continue
		}
		tried++
		var res *sphinx.Result
		if s.pf.kind == mixkey.XWing {
			res, err = sphinx.UnwrapKEM(s.pf.kgeo, s.ring.kem[k.epoch], buf)
		} else {
			res, err = sphinx.Unwrap(s.pf.geo, priv, buf)
		}
		if errors.Is(err, sphinx.ErrBadMAC) {
			continue
		}
		if err != nil {
			return nil, errMalformed("sphinx: packet for epoch %d rejected: %v", k.epoch, err)
		}
		return s.mixResult(st, k.epoch, res)
	}
	if tried == 0 {
		return nil, sdk.Temporary(451, "3.0", "sphinx: every mix key of this node has expired; waiting for new keys")
	}
	return nil, errMalformed("sphinx: packet authenticates under none of this node's %d valid mix keys (tampered, for another node, or for an expired epoch)", tried)
}

func (s *Stage) mixResult(st *mixState, epoch uint64, res *sphinx.Result) (*sdk.MixResult, error) {
	out := &sdk.MixResult{ReplayTag: res.ReplayTag, Epoch: epoch}
	switch res.Action {
	case sphinx.Forward:
		out.Action, out.NextHop, out.Packet = sdk.MixForward, res.Next, res.Packet
	case sphinx.Drop:
		out.Action = sdk.MixDrop
	case sphinx.Exit:
		p, err := parsePayload(res.Payload, s.maxFragments)
		if err != nil {
			return nil, errMalformed("%v", err)
		}
		if p.fragment != nil && !st.selfExit {
			return nil, errMalformed("sphinx: a message fragment exits at this node, which is not an exit")
		}
		out.Action, out.Fragment, out.LoopID = sdk.MixExit, p.fragment, p.loopID
	default:
		return nil, errMalformed("sphinx: unknown action %v", res.Action)
	}
	return out, nil
}

// Cover builds one cover packet (sdk.CoverDrop or sdk.CoverLoop) with the
// current epoch's keys. On the wire it is a real packet: packet_size bytes,
// the same format, `hops` hops, every payload layer filled to the end.
//
//   - CoverDrop: `hops` distinct healthy nodes other than this one (any of
//     them may be last, exit or not); the last hop's command is Drop and the
//     payload is PayloadSize random bytes. Packet.Path lists the path
//     (the core learns the path length from it).
//   - CoverLoop: `hops`-1 distinct healthy nodes other than this one, then
//     this node; the last command is Exit and the payload is the loop type
//     byte, a random non-zero 16-byte LoopID and random padding up to
//     PayloadSize. Packet.Path lists the whole path in order, this node
//     last; Packet.LoopID is what Mix returns when the loop comes back.
//
// Errors: temporary 451 4.4.0 when too few healthy nodes are known, 451
// 4.3.0 before the first MixState or (loops) without an own key for the
// current epoch; permanent 554 5.3.5 for an unknown kind.
func (s *Stage) Cover(_ context.Context, k sdk.CoverKind) (*sdk.Packet, error) {
	st, err := s.loadState()
	if err != nil {
		return nil, err
	}
	payload := make([]byte, s.pf.payloadSize())
	switch k {
	case sdk.CoverDrop:
		path, err := choosePath(st.candidates, s.hops, false, s.rand)
		if err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s.rand, payload); err != nil {
			return nil, fmt.Errorf("sphinx: reading randomness: %w", err)
		}
		pkt, err := s.pf.newPacket(path, sphinx.Drop, payload, s.rand)
		if err != nil {
			return nil, packetError(err)
		}
		return &sdk.Packet{NextHop: path[0].id, Data: pkt, Path: idsOf(path)}, nil
	case sdk.CoverLoop:
		if st.selfKey == nil {
			return nil, sdk.Temporary(451, "3.0", "sphinx: no own mix key for the current epoch %d", st.epoch)
		}
		path, err := choosePath(st.candidates, s.hops-1, false, s.rand)
		if err != nil {
			return nil, err
		}
		path = append(path, candidate{id: st.self, key: st.selfKey, kem: st.selfKEM})
		payload[0] = payloadLoop
		if _, err := io.ReadFull(s.rand, payload[1:]); err != nil {
			return nil, fmt.Errorf("sphinx: reading randomness: %w", err)
		}
		var loopID [loopIDSize]byte
		copy(loopID[:], payload[1:])
		if loopID == ([loopIDSize]byte{}) { // 2^-128: never, but the id must not be zero
			return nil, fmt.Errorf("sphinx: drew a zero loop id")
		}
		pkt, err := s.pf.newPacket(path, sphinx.Exit, payload, s.rand)
		if err != nil {
			return nil, packetError(err)
		}
		return &sdk.Packet{NextHop: path[0].id, Data: pkt, LoopID: loopID, Path: idsOf(path)}, nil
	}
	return nil, sdk.Permanent(554, "3.5", "sphinx: unknown cover kind %d", k)
}

// Assemble parses the concatenated Data of all fragments of one message, in
// Index order, as an inner message (SPEC.md §14.1) followed by its zero
// padding (§14.3) and returns the message with its inner envelope. Header
// and Body alias data. It needs no MixState. Errors: permanent 554 5.6.0
// for an inner message larger than max_message_bytes allows, padding that
// is not zero or not exactly up to the message's size class, a wrong
// digest (fragments mixed up) or any malformed field.
func (s *Stage) Assemble(_ context.Context, data []byte) (*sdk.Message, error) {
	n, err := innerLength(data)
	if err != nil {
		return nil, errMalformed("%v", err)
	}
	if n > s.maxInner {
		return nil, errMalformed("sphinx: reassembled message of %d bytes exceeds the %d that max_message_bytes allows", n, s.maxInner)
	}
	count := int((n + int64(s.fragData) - 1) / int64(s.fragData))
	if want := int64(sizeClass(count, s.maxFragments)) * int64(s.fragData); int64(len(data)) != want {
		return nil, errMalformed("sphinx: reassembled %d bytes for an inner message of %d, want %d (its size class)", len(data), n, want)
	}
	if slices.ContainsFunc(data[n:], func(b byte) bool { return b != 0 }) {
		return nil, errMalformed("sphinx: padding after the inner message is not zero")
	}
	m, err := decodeInner(data[:n])
	if err != nil {
		return nil, errMalformed("%v", err)
	}
	return m, nil
}
