package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
)

// Route turns a message into Sphinx packets at the entry: it encodes the
// envelope (with the null sender as MAIL FROM), header and body as an
// inner message (SPEC.md §14.1), pads it with zero bytes up to its size
// class (sizeClass: a power of two of fragments), cuts it into fragments
// of PayloadSize - 25 bytes (65200 with 64 KiB packets; a fragment header
// is 25 bytes, SPEC.md §14.2) under one random 16-byte message id, chooses
// one path for the whole message (choosePath: `hops` distinct healthy
// nodes with a key for the current epoch, an exit last, never this node)
// and builds one packet per fragment over it with the current epoch's
// keys. One path per message keeps the chance that an adversary holding
// the exit traces the message at that of one packet (SPEC.md §14.3).
//
// It returns one route per packet: Body is the packet (packet_size bytes),
// NextHop its first hop, RcptTo every recipient of the message (the core's
// bookkeeping: all of them travel inside every fragment's message).
//
// Errors: 552 5.3.4 when header + body exceed max_message_bytes; the
// permanent envelope errors of encodeInner; a temporary 451 4.4.0 when too
// few healthy nodes (or no exit) are known, and 451 4.3.0 before the first
// MixState. A message is never delivered any other way.
func (s *Stage) Route(ctx context.Context, m *sdk.Message) ([]sdk.Route, error) {
	st, err := s.loadState()
	if err != nil {
		return nil, err
	}
	if size := int64(len(m.Header)) + int64(len(m.Body)); size > s.maxMessage {
		return nil, sdk.Permanent(552, "3.4", "sphinx: message of %d bytes exceeds max_message_bytes (%d)", size, s.maxMessage)
	}
	news, mail := s.byKind(m.Envelope.RcptTo)
	if len(news) == 0 || len(mail) == 0 {
		return s.route(ctx, st, m.Envelope, m)
	}
	// An exit hands a message to its one deliverer, which either posts
	// news or delivers mail: the recipients of each kind travel as a
	// message of their own, each to an exit for its kind.
	var routes []sdk.Route
	for _, rcpts := range [][]string{news, mail} {
		env := m.Envelope
		env.RcptTo = rcpts
		r, err := s.route(ctx, st, env, m)
		if err != nil {
			return nil, err
		}
		routes = append(routes, r...)
	}
	return routes, nil
}

// route builds the packets of m for the recipients of env.
func (s *Stage) route(ctx context.Context, st *mixState, env sdk.Envelope, m *sdk.Message) ([]sdk.Route, error) {
	// Fail before any work when no path exists. Every fragment takes this
	// path: fragments on paths of their own would give an adversary who
	// holds the exit one chance per fragment to hold the rest of a path.
	// Its exit must deliver to every recipient (exitsFor: mail2news).
	cands, err := exitsFor(st.candidates, s.needs(env.RcptTo))
	if err != nil {
		return nil, err
	}
	path, err := choosePath(cands, s.hops, true, s.rand)
	if err != nil {
		return nil, err
	}
	// The packet carries the null sender whatever came in: the entry's
	// sanitize stage should already have set it, and an exit must never
	// learn a sender even from a pipeline that forgot to.
	env.MailFrom = ""
	im, err := encodeInner(env, m.Header, m.Body)
	if err != nil {
		return nil, err
	}
	count := int((im.size + int64(s.fragData) - 1) / int64(s.fragData))
	if count > s.maxFragments { // only if maxEnvelopeBytes changed: keep the exit's bound true
		return nil, sdk.Permanent(552, "3.4", "sphinx: message needs %d fragments, the limit is %d", count, s.maxFragments)
	}
	count = sizeClass(count, s.maxFragments)
	var id [messageIDSize]byte
	if _, err := io.ReadFull(s.rand, id[:]); err != nil {
		return nil, fmt.Errorf("sphinx: reading randomness: %w", err)
	}
	rcpts := slices.Clone(env.RcptTo)
	padded := int64(count) * int64(s.fragData)
	src := io.MultiReader(im.reader(), io.LimitReader(zeros{}, padded-im.size))
	payload := make([]byte, fragmentHeaderSize+s.fragData)
	routes := make([]sdk.Route, 0, count)
	for i := range count {
		if err := ctx.Err(); err != nil {
			return nil, sdk.Temporary(451, "4.0", "sphinx: routing interrupted: %v", err)
		}
		putFragmentHeader(payload, id, i, count)
		if _, err := io.ReadFull(src, payload[fragmentHeaderSize:]); err != nil {
			return nil, fmt.Errorf("sphinx: plugin bug: fragment %d: %w", i, err)
		}
		pkt, err := s.pf.newPacket(path, sphinx.Exit, payload, s.rand)
		if err != nil {
			return nil, packetError(err)
		}
		routes = append(routes, sdk.Route{RcptTo: rcpts, Body: pkt, NextHop: path[0].id})
	}
	s.log.Debug("message routed", "fragments", count, "hops", s.hops)
	return routes, nil
}

// sizeClass is the number of fragments a message of n fragments is padded
// to: the smallest power of two >= n, or limit (the exit's fragment limit)
// when that is smaller. So the fragment count, the one thing about a
// message's size that leaves the entry (as a number of packets), tells only
// which of ~log2(limit)+1 classes it is in (11 with the defaults), at a
// cost of less than twice the packets.
func sizeClass(n, limit int) int {
	c := 1
	for c < n {
		c *= 2
	}
	return min(c, limit)
}

// zeros reads as an endless run of zero bytes (the padding).
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// packetError classifies a NewPacket failure. ErrBadKey means a directory
// key the core should have refused (a low-order point); the next attempt
// draws other paths, so it is temporary, like any failure of randomness.
func packetError(err error) error {
	if errors.Is(err, sphinx.ErrBadKey) {
		return sdk.Temporary(451, "4.0", "sphinx: a directory node has an unusable mix key: %v", err)
	}
	return fmt.Errorf("sphinx: building packet: %w", err)
}
