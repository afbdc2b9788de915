package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// TestMail2NewsMessagesExitOnlyAtMail2NewsNodes: a message for a
// mail2news address always ends at a node with the mail2news capability,
// ordinary mail never ends at a node that only posts news, and a message
// with both needs both; other nodes still serve as middle hops.
func TestMail2NewsMessagesExitOnlyAtMail2NewsNodes(t *testing.T) {
	var cands []candidate
	kinds := []struct{ exit, news bool }{{true, false}, {true, false}, {false, false}, {false, true}, {true, true}}
	for i, k := range kinds {
		cands = append(cands, candidate{id: sdk.NodeID{byte(i + 1)}, exit: k.exit, news: k.news, key: make([]byte, 32)})
	}
	s := &Stage{newsPrefix: "mail2news"}
	cases := []struct {
		rcpts     []string
		wantExits map[byte]bool
	}{
		{[]string{"mail2news@gw.example"}, map[byte]bool{4: true, 5: true}},
		{[]string{"Mail2News-20260310-alt.test@gw.example"}, map[byte]bool{4: true, 5: true}},
		{[]string{"bob@example.net"}, map[byte]bool{1: true, 2: true, 5: true}},
		{[]string{"bob@example.net", "mail2news@gw.example"}, map[byte]bool{5: true}},
	}
	for _, c := range cases {
		use, err := exitsFor(cands, s.needs(c.rcpts))
		if err != nil {
			t.Fatalf("%v: %v", c.rcpts, err)
		}
		seen := map[byte]bool{}
		middles := map[byte]bool{}
		for range 2000 {
			p, err := choosePath(use, 3, true, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			last := p[len(p)-1].id[0]
			if !c.wantExits[last] {
				t.Fatalf("%v: exit node %d chosen, allowed %v", c.rcpts, last, c.wantExits)
			}
			seen[last] = true
			for _, h := range p[:len(p)-1] {
				middles[h.id[0]] = true
			}
		}
		if len(seen) != len(c.wantExits) {
			t.Errorf("%v: exits used %v, want all of %v", c.rcpts, seen, c.wantExits)
		}
		// Every node is a middle hop, except the only possible exit.
		want := len(kinds)
		if len(c.wantExits) == 1 {
			want--
		}
		if len(middles) != want {
			t.Errorf("%v: middle hops used %v, want %d nodes", c.rcpts, middles, want)
		}
	}
	// Without a prefix every recipient is ordinary mail.
	if n := (&Stage{}).needs([]string{"mail2news@gw.example"}); n.news || !n.mail {
		t.Errorf("empty prefix: needs %+v", n)
	}
}

func TestMail2NewsWithoutCapableExitWaits(t *testing.T) {
	cands := []candidate{{id: sdk.NodeID{1}, exit: true}, {id: sdk.NodeID{2}}, {id: sdk.NodeID{3}, exit: true}}
	_, err := exitsFor(cands, exitNeeds{news: true})
	if e := sdk.AsError(err); e == nil || !e.Temporary {
		t.Fatalf("got %v, want a temporary error", err)
	}
}

// TestMail2NewsNodeAcceptsFragments: a node whose descriptor says
// mail2news (not exit) reassembles, so its mixer takes exit fragments.
func TestMail2NewsNodeAcceptsFragments(t *testing.T) {
	self := sdk.NodeID{9}
	st, err := newMixState(sdk.MixState{Self: self, Nodes: []sdk.DirectoryNode{{ID: self, Capabilities: []string{sdk.CapMail2News}}}}, x25519Format)
	if err != nil {
		t.Fatal(err)
	}
	if !st.selfExit {
		t.Fatal("a mail2news node does not take exit fragments")
	}
	st, _ = newMixState(sdk.MixState{Self: self, Nodes: []sdk.DirectoryNode{{ID: self}}}, x25519Format)
	if st.selfExit {
		t.Fatal("a node without exit or mail2news takes exit fragments")
	}
}

// TestMixedMessageTravelsAsOneMessagePerKind: a message for a mail2news
// address and for ordinary mail, with no node that has both capabilities
// (an exit has one deliverer, which posts news or delivers mail), goes as
// two messages: the news recipient's to the mail2news node, the mail
// recipient's to an exit, each carrying only its own recipients.
func TestMixedMessageTravelsAsOneMessagePerKind(t *testing.T) {
	cfg := testConfig()
	cfg.Mail2NewsLocalPart = "mail2news"
	net := newTestNet(t, 6, cfg, 3, 4)
	net.nodes[5].news = true
	net.push()
	m := testMessage(1<<10, 1)
	m.Envelope.RcptTo = []string{"bob@example.net", "mail2news@gw.example", "carol@example.org"}
	routes, err := net.nodes[0].stage.Route(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	byRcpts := map[string][]sdk.Route{}
	for _, r := range routes {
		byRcpts[strings.Join(r.RcptTo, ",")] = append(byRcpts[strings.Join(r.RcptTo, ",")], r)
	}
	want := map[string]map[string]bool{
		"mail2news@gw.example":              {"node5": true},
		"bob@example.net,carol@example.org": {"node3": true, "node4": true},
	}
	if len(byRcpts) != len(want) {
		t.Fatalf("routes for %d recipient sets, want %d: %q", len(byRcpts), len(want), slices.Sorted(maps.Keys(byRcpts)))
	}
	for rcpts, exits := range want {
		frags, paths := net.deliverAll(byRcpts[rcpts])
		for _, p := range paths {
			if last := p[len(p)-1]; !exits[last.name] {
				t.Errorf("%s: exit %s, want one of %v", rcpts, last.name, exits)
			}
		}
		got, err := net.nodes[5].stage.Assemble(context.Background(), concat(frags))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got.Envelope.RcptTo, ",") != rcpts || !bytes.Equal(got.Body, m.Body) {
			t.Errorf("%s: assembled recipients %q, body intact %v", rcpts, got.Envelope.RcptTo, bytes.Equal(got.Body, m.Body))
		}
	}
}
