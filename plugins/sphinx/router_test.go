package main

import (
	"bytes"
	"context"
	"reflect"
	"slices"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// The entry (node 0) routes a message, every packet travels hop by hop
// through Mix at each node's own stage, the exits' fragments are joined
// in index order and Assemble returns the same envelope, header and body.
func TestRouteMixAssembleRoundTripKeepsMessageIntact(t *testing.T) {
	net := newTestNet(t, 6, testConfig(), 3, 4, 5)
	entry := net.nodes[0]
	fragData := entry.stage.fragData // 65200 with 64 KiB packets
	if fragData != 65536-307-4-25 {
		t.Fatalf("fragment data size %d, want %d", fragData, 65536-307-4-25)
	}
	cases := []struct {
		name string
		size int
	}{
		{"1 KiB", 1 << 10},
		{"60 KiB", 60 << 10},
		{"200 KiB", 200 << 10},
		{"2 MiB", 2 << 20},
		{"empty body", 0},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := testMessage(c.size, uint64(i))
			im, err := encodeInner(m.Envelope, m.Header, m.Body)
			if err != nil {
				t.Fatal(err)
			}
			wantCount := sizeClass(int((im.size+int64(fragData)-1)/int64(fragData)), entry.stage.maxFragments)
			routes, err := entry.stage.Route(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			if len(routes) != wantCount {
				t.Fatalf("%d packets, want %d", len(routes), wantCount)
			}
			for j, r := range routes {
				if len(r.Body) != 65536 {
					t.Fatalf("packet %d has %d bytes, want 65536", j, len(r.Body))
				}
				if !slices.Equal(r.RcptTo, m.Envelope.RcptTo) {
					t.Fatalf("route %d RcptTo %q, want every recipient %q", j, r.RcptTo, m.Envelope.RcptTo)
				}
				if r.Deliverer != "" || r.NextHop == (sdk.NodeID{}) {
					t.Fatalf("route %d: want a packet route (NextHop set, no deliverer), got %+v", j, r.Deliverer)
				}
			}
			frags, paths := net.deliverAll(routes)
			for j, f := range frags {
				if f.MessageID != frags[0].MessageID {
					t.Fatalf("fragment %d has message id %x, fragment 0 %x", j, f.MessageID, frags[0].MessageID)
				}
				checkPath(t, paths[j], entry, 3)
			}
			got, err := entry.stage.Assemble(context.Background(), concat(frags))
			if err != nil {
				t.Fatal(err)
			}
			want := m.Envelope
			want.MailFrom = "" // the sender never travels
			if !reflect.DeepEqual(got.Envelope, want) {
				t.Fatalf("envelope %+v, want %+v", got.Envelope, want)
			}
			if !bytes.Equal(got.Header, m.Header) || !bytes.Equal(got.Body, m.Body) {
				t.Fatalf("header/body differ: got %d+%d bytes, want %d+%d", len(got.Header), len(got.Body), len(m.Header), len(m.Body))
			}
		})
	}
}

// Inner messages of exactly one fragment's capacity and one byte more:
// one and two packets, both reassembled intact.
func TestRouteSplitsAtTheExactFragmentBoundary(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	entry := net.nodes[0]
	base := testMessage(0, 7)
	base.Envelope.MailFrom = ""
	im, _ := encodeInner(base.Envelope, base.Header, nil)
	for _, extra := range []int{0, 1} {
		m := testMessage(0, 7)
		m.Body = bytes.Repeat([]byte{'x'}, entry.stage.fragData-int(im.size)+extra)
		routes, err := entry.stage.Route(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 1+extra {
			t.Fatalf("inner message of fragment size + %d: %d packets, want %d", extra, len(routes), 1+extra)
		}
		frags, _ := net.deliverAll(routes)
		if got := len(frags[len(frags)-1].Data); got != entry.stage.fragData {
			t.Fatalf("last fragment has %d bytes, want %d (padded)", got, entry.stage.fragData)
		}
		got, err := entry.stage.Assemble(context.Background(), concat(frags))
		if err != nil || !bytes.Equal(got.Body, m.Body) {
			t.Fatalf("reassembly failed: %v", err)
		}
	}
}

// Every fragment of a message takes the message's one path (an adversary
// holding the exit then traces the message with the chance of one packet,
// SPEC.md §14.3), while messages draw their paths independently: 64
// fragments of a 2 MiB message over 8 nodes share one path, and 20
// messages use several.
func TestRouteSendsEveryFragmentOfAMessageOverOnePath(t *testing.T) {
	net := newTestNet(t, 8, testConfig(), 5, 6, 7)
	key := func(p []*testNode) string {
		var k []byte
		for _, n := range p {
			k = append(k, n.id[:]...)
		}
		return string(k)
	}
	routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(2<<20, 3))
	if err != nil {
		t.Fatal(err)
	}
	_, paths := net.deliverAll(routes)
	for i, p := range paths {
		if key(p) != key(paths[0]) {
			t.Fatalf("fragment %d took another path than fragment 0", i)
		}
	}
	perMessage := map[string]bool{}
	for i := range 20 {
		routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(100, uint64(i)))
		if err != nil {
			t.Fatal(err)
		}
		_, paths := net.deliverAll(routes)
		perMessage[key(paths[0])] = true
	}
	// 8 nodes minus self, 3 exits: 90 paths; 20 draws give at least 5
	// distinct ones except with negligible probability.
	if len(perMessage) < 5 {
		t.Fatalf("20 messages took only %d distinct paths", len(perMessage))
	}
}

// Messages are padded to size classes: the packet count is a power of two
// (or the fragment limit), and every message in a class gives the same
// count.
func TestRoutePadsMessagesToSizeClasses(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	s := net.nodes[0].stage
	cases := []struct{ size, packets int }{
		{0, 1}, {1 << 10, 1}, {60 << 10, 1}, {64 << 10, 2}, {100 << 10, 2}, {130 << 10, 4},
		{200 << 10, 4}, {300 << 10, 8}, {1 << 20, 32}, {2 << 20, 64}, {3 << 20, 64},
	}
	for _, c := range cases {
		routes, err := s.Route(context.Background(), testMessage(c.size, 1))
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != c.packets {
			t.Errorf("%d-byte message: %d packets, want %d", c.size, len(routes), c.packets)
		}
	}
	if got := sizeClass(s.maxFragments-1, s.maxFragments); got != s.maxFragments {
		t.Errorf("the largest class is %d fragments, want the limit %d", got, s.maxFragments)
	}
}

func TestRouteRejectsMessageOverMaxMessageBytesWith552(t *testing.T) {
	cfg := testConfig()
	cfg.MaxMessageBytes = 100 << 10
	net := newTestNet(t, 4, cfg, 3)
	m := testMessage(100<<10+1, 1)
	_, err := net.nodes[0].stage.Route(context.Background(), m)
	wantPermanent(t, err, "exceeds max_message_bytes")
	if e := sdk.AsError(err); e.SMTPCode() != 552 || e.EnhancedCode() != "5.3.4" {
		t.Fatalf("want 552 5.3.4, got %d %s", e.SMTPCode(), e.EnhancedCode())
	}
	if _, err := net.nodes[0].stage.Route(context.Background(), testMessage(100<<10, 1)); err != nil {
		t.Fatalf("a message of exactly max_message_bytes must pass, got %v", err)
	}
}

// Too few usable nodes is a temporary failure with no packet at all:
// never a fall-back to direct delivery.
func TestRouteFailsTemporarilyWithTooFewUsableNodes(t *testing.T) {
	cases := []struct {
		name  string
		nodes int
		exits []int
		edit  func(net *testNet)
		want  string
	}{
		{"only self and two others", 3, []int{2}, nil, "a path needs 3"},
		{"no exit", 5, nil, nil, "no healthy exit"},
		{"the only exit is self", 5, []int{0}, nil, "no healthy exit"},
		{"the exit is unhealthy", 5, []int{4}, func(net *testNet) { net.nodes[4].healthy = false }, "no healthy exit"},
		{"two unhealthy of four others", 5, []int{4}, func(net *testNet) { net.nodes[1].healthy, net.nodes[2].healthy = false, false }, "a path needs 3"},
		{"two lack a current key", 5, []int{4}, func(net *testNet) {
			delete(net.nodes[1].keys, testEpoch)
			delete(net.nodes[2].keys, testEpoch)
		}, "a path needs 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			net := newTestNet(t, c.nodes, testConfig(), c.exits...)
			if c.edit != nil {
				c.edit(net)
				if err := net.nodes[0].stage.SetMixState(context.Background(), net.stateOf(net.nodes[0])); err != nil {
					t.Fatal(err)
				}
			}
			routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(1000, 1))
			wantTemporary(t, err, c.want)
			if routes != nil {
				t.Fatalf("want no route, got %d", len(routes))
			}
		})
	}
}

func TestRouteBeforeMixStateIsTemporary(t *testing.T) {
	s := newStageWith(testConfig(), nil, nil, nil)
	_, err := s.Route(context.Background(), testMessage(100, 1))
	wantTemporary(t, err, "no mix state")
}

// An envelope the exit could not use is refused at the entry, permanently,
// with an error that names no address.
func TestRouteRejectsEnvelopeThatCannotTravel(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	cases := []struct {
		name string
		env  sdk.Envelope
		want string
	}{
		{"no recipient", sdk.Envelope{MailFrom: "a@b.example"}, "no RCPT TO"},
		{"CRLF in RCPT TO", sdk.Envelope{RcptTo: []string{"ok@x.example", "evil@x.example>\r\nDATA"}}, "RCPT TO #2 cannot travel"},
		{"empty RCPT TO", sdk.Envelope{RcptTo: []string{""}}, "RCPT TO #1 cannot travel"},
		{"invalid UTF-8", sdk.Envelope{RcptTo: []string{"\xff@x.example"}, SMTPUTF8: true}, "not valid UTF-8"},
		{"unknown BODY", sdk.Envelope{RcptTo: []string{"c@d.example"}, BodyType: "9BIT"}, "unknown BODY type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := testMessage(100, 1)
			m.Envelope = c.env
			_, err := net.nodes[0].stage.Route(context.Background(), m)
			wantPermanent(t, err, c.want)
			if bytesContainsAny(err.Error(), c.env.RcptTo) {
				t.Fatalf("error names an address: %v", err)
			}
		})
	}
}

// checkPath fails unless path has n distinct nodes, none of them self, all
// healthy, and ends at an exit.
func checkPath(t *testing.T, path []*testNode, self *testNode, n int) {
	t.Helper()
	if len(path) != n {
		t.Fatalf("path of %d hops, want %d", len(path), n)
	}
	seen := map[sdk.NodeID]bool{}
	for _, nd := range path {
		if nd == self || seen[nd.id] || !nd.healthy {
			t.Fatalf("path %v: repeats a node, uses the sender or an unhealthy node", names(path))
		}
		seen[nd.id] = true
	}
	if !path[n-1].exit {
		t.Fatalf("path %v does not end at an exit", names(path))
	}
}

func names(path []*testNode) []string {
	var s []string
	for _, n := range path {
		s = append(s, n.name)
	}
	return s
}

func bytesContainsAny(s string, addrs []string) bool {
	for _, a := range addrs {
		if a != "" && bytes.Contains([]byte(s), []byte(a)) {
			return true
		}
	}
	return false
}

// The envelope sender never travels: whatever MAIL FROM the entry's
// pipeline hands the router (even one no sanitize stage removed, even one
// that could not be encoded), the exit reassembles the null sender and no
// packet carries the address (checked by unwrapping every layer).
func TestRouteSendsTheNullSenderWhateverMailFromSays(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	for _, from := range []string{"LEAK-envsender@example.org", "a\x00@b.example"} {
		m := testMessage(100, 3)
		m.Envelope.MailFrom = from
		routes, err := net.nodes[0].stage.Route(context.Background(), m)
		if err != nil {
			t.Fatalf("MAIL FROM %q: %v", from, err)
		}
		frags, _ := net.deliverAll(routes)
		for _, f := range frags {
			if bytes.Contains(f.Data, []byte(from)) {
				t.Fatalf("a fragment carries MAIL FROM %q", from)
			}
		}
		got, err := net.nodes[0].stage.Assemble(context.Background(), concat(frags))
		if err != nil {
			t.Fatal(err)
		}
		if got.Envelope.MailFrom != "" {
			t.Fatalf("exit got MAIL FROM %q, want the null sender", got.Envelope.MailFrom)
		}
	}
}
