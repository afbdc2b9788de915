package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// FuzzAssemble: decodeInner never panics, and whatever it accepts encodes
// back to exactly the same bytes (one encoding per message: nothing can be
// smuggled in a second representation).
//
//	go test -run '^$' -fuzz FuzzAssemble -fuzztime 60s ./plugins/sphinx/
func FuzzAssemble(f *testing.F) {
	cfg := testConfig()
	cfg.PacketSize = 1024 // small fragments: padded inputs stay small
	s := newStageWith(cfg, nil, nil, nil)
	for _, m := range []*sdk.Message{testMessage(200, 1), testMessage(0, 2), testMessage(1500, 3)} {
		im, err := encodeInner(m.Envelope, m.Header, m.Body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(padToClass(s, im.bytes()))
		f.Add(im.bytes())
		f.Add(resum(append(im.bytes()[:20:20], make([]byte, 40)...)))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		// A fuzzer rarely finds a valid digest: fix it up half of the time
		// so the field checks behind it are explored too.
		if n, err := innerLength(data); err == nil && n > digestSize && data[0]&0x80 != 0 {
			data = bytes.Clone(data)
			data[0] &^= 0x80
			resum(data[:n])
		}
		m, err := s.Assemble(context.Background(), data)
		if err != nil {
			if !sdk.IsPermanent(err) {
				t.Fatalf("Assemble error is not permanent: %v", err)
			}
			return
		}
		im, err := encodeInner(m.Envelope, m.Header, m.Body)
		if err != nil {
			t.Fatalf("accepted a message the entry could not encode: %v", err)
		}
		if out := padToClass(s, im.bytes()); !bytes.Equal(out, data) {
			t.Fatalf("accepted a non-canonical encoding:\n in %x\nout %x", data, out)
		}
	})
}

// FuzzParsePayload: the exit payload parser never panics and what it
// accepts obeys §14.2.
func FuzzParsePayload(f *testing.F) {
	p := make([]byte, fragmentHeaderSize+3)
	putFragmentHeader(p, [16]byte{9}, 1, 2)
	f.Add(p)
	f.Add(append([]byte{payloadLoop}, bytes.Repeat([]byte{1}, 20)...))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parsePayload(data, 100)
		if err != nil {
			return
		}
		if fr := got.fragment; fr != nil {
			if fr.Count < 1 || fr.Count > 100 || fr.Index >= fr.Count || len(fr.Data) == 0 || data[0] != payloadFragment {
				t.Fatalf("accepted a bad fragment: %+v", fr)
			}
		} else if got.loopID == ([16]byte{}) || data[0] != payloadLoop {
			t.Fatalf("accepted a bad loop payload %x", data)
		}
	})
}

// FuzzMix: Mix never panics on any input, and only the untouched packets
// it was seeded with are ever forwarded, exited or dropped: any change is
// a permanent error (no forward of a bad packet). 1024-byte packets keep
// the fuzzer fast.
//
//	go test -run '^$' -fuzz FuzzMix -fuzztime 60s ./plugins/sphinx/
func FuzzMix(f *testing.F) {
	cfg := testConfig()
	cfg.PacketSize = 1024
	cfg.MaxMessageBytes = 4096
	net := newTestNet(f, 4, cfg, 1, 2, 3)
	target := net.nodes[1]
	// Seeds: packets whose first hop is target, of every kind.
	valid := map[string]bool{}
	add := func(next sdk.NodeID, pkt []byte) {
		if next == target.id {
			valid[string(pkt)] = true
			f.Add(bytes.Clone(pkt))
		}
	}
	for range 40 {
		if routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(300, 4)); err == nil {
			for _, r := range routes {
				add(r.NextHop, r.Body)
			}
		}
		for _, k := range []sdk.CoverKind{sdk.CoverDrop, sdk.CoverLoop} {
			if p, err := net.nodes[0].stage.Cover(context.Background(), k); err == nil {
				add(p.NextHop, p.Data)
			}
		}
	}
	if len(valid) == 0 {
		f.Fatal("no seed packet for the target node")
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := target.stage.Mix(context.Background(), data)
		if err != nil {
			if !sdk.IsPermanent(err) {
				t.Fatalf("Mix error on a bad packet is not permanent: %v", err)
			}
			return
		}
		if !valid[string(data)] {
			t.Fatalf("Mix accepted a packet nobody built (action %d)", res.Action)
		}
	})
}
