package main

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// Five nodes, each its own plugin process launched through the real host
// (handshake, gRPC, Configure), each told its keys and the directory with
// SetMixState over RPC. Node 0 routes a 200 KiB message; every packet is
// mixed by the process of the node it was sent to until it exits; the exit
// process reassembles it. A loop built by node 0 comes back to node 0.
func TestRouteMixAssembleAcrossPluginProcesses(t *testing.T) {
	bin := plugintest.Build(t, ".")
	now := time.Now()
	net := newTestNetAt(t, uint64(now.Unix()/3600), 5, testConfig(), 3, 4)
	clients := map[sdk.NodeID]*plugintest.Plugin{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, nd := range net.nodes {
		c := plugintest.Start(t, bin, `{"hops": 3}`)
		if err := c.SetMixState(ctx, net.stateOf(nd)); err != nil {
			t.Fatalf("SetMixState %s: %v", nd.name, err)
		}
		clients[nd.id] = c
	}
	entry := clients[net.nodes[0].id]
	info := entry.Info()
	if !info.Has(sdk.KindRouter) || !info.Has(sdk.KindMixer) || info.Needs != sdk.NeedAll || info.Name != "sphinx" {
		t.Fatalf("info %+v: want sphinx with kinds router and mixer, needs header and body", info)
	}

	m := testMessage(200<<10, 11)
	routes, err := entry.Route(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 4 {
		t.Fatalf("%d packets for 200 KiB, want 4", len(routes))
	}
	mix := func(at sdk.NodeID, pkt []byte) ([]sdk.NodeID, *sdk.MixResult) {
		var path []sdk.NodeID
		for range 4 {
			c := clients[at]
			if c == nil {
				t.Fatalf("packet sent to unknown node %s", at.Short())
			}
			path = append(path, at)
			res, err := c.Mix(ctx, pkt)
			if err != nil {
				t.Fatalf("Mix at %s: %v", at.Short(), err)
			}
			if res.Action != sdk.MixForward {
				return path, res
			}
			if len(res.Packet) != 65536 {
				t.Fatalf("forwarded %d bytes", len(res.Packet))
			}
			at, pkt = res.NextHop, res.Packet
		}
		t.Fatal("packet never left the network")
		return nil, nil
	}
	frags := make([]*sdk.Fragment, len(routes))
	var exit sdk.NodeID
	for _, r := range routes {
		if len(r.Body) != 65536 || !slices.Equal(r.RcptTo, m.Envelope.RcptTo) {
			t.Fatalf("route: %d bytes, RcptTo %q", len(r.Body), r.RcptTo)
		}
		path, res := mix(r.NextHop, r.Body)
		if len(path) != 3 || slices.Contains(path, net.nodes[0].id) || !net.byID[path[2]].exit {
			t.Fatalf("path breaks the rules: %d hops, via self or not ending at an exit", len(path))
		}
		if res.Action != sdk.MixExit || res.Fragment == nil || res.Epoch != net.epoch {
			t.Fatalf("exit result: action %d fragment %v epoch %d", res.Action, res.Fragment != nil, res.Epoch)
		}
		frags[res.Fragment.Index] = res.Fragment
		exit = path[2]
	}
	got, err := clients[exit].Assemble(ctx, concat(frags))
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := m.Envelope
	wantEnv.MailFrom = "" // the sender never travels
	if !reflect.DeepEqual(got.Envelope, wantEnv) || !bytes.Equal(got.Header, m.Header) || !bytes.Equal(got.Body, m.Body) {
		t.Fatalf("reassembled message differs: envelope %+v, %d+%d bytes", got.Envelope, len(got.Header), len(got.Body))
	}

	loop, err := entry.Cover(ctx, sdk.CoverLoop)
	if err != nil {
		t.Fatal(err)
	}
	path, res := mix(loop.NextHop, loop.Data)
	if !slices.Equal(path, loop.Path) || path[len(path)-1] != net.nodes[0].id || res.Action != sdk.MixExit || res.LoopID != loop.LoopID {
		t.Fatalf("loop did not come back to its sender with its id (action %d)", res.Action)
	}

	// A tampered packet is a permanent error through the RPC too.
	bad := bytes.Clone(routes[0].Body)
	bad[100] ^= 1
	_, err = clients[routes[0].NextHop].Mix(ctx, bad)
	if !sdk.IsPermanent(err) {
		t.Fatalf("tampered packet: want a permanent error, got %v", err)
	}
}

// Config errors name the key, as `mixmta check-config` reports them.
func TestConfigErrorsNameTheKey(t *testing.T) {
	bin := plugintest.Build(t, ".")
	cases := []struct{ config, key string }{
		{`{"hops": 4}`, "hops"},
		{`{"hops": 0}`, "hops"},
		{`{"hops": 1}`, "hops"}, // the exit would see the sender
		{`{"max_hops": 6}`, "max_hops"},
		{`{"hops": 5, "max_hops": 4}`, "hops"},
		{`{"packet_size": 512}`, "packet_size"},
		{`{"packet_size": 16777217}`, "packet_size"},
		{`{"max_message_bytes": 0}`, "max_message_bytes"},
		{`{"max_message_bytes": 1073741825}`, "max_message_bytes"},
	}
	for _, c := range cases {
		_, err := plugintest.StartErr(t, bin, c.config)
		var fe *sdk.FieldError
		if !errors.As(err, &fe) || fe.Field != c.key {
			t.Errorf("config %s: want an error on key %s, got %v", c.config, c.key, err)
		}
	}
	if _, err := plugintest.StartErr(t, bin, `{"hopz": 3}`); err == nil || !strings.Contains(err.Error(), "hopz") {
		t.Errorf("unknown key: want an error naming hopz, got %v", err)
	}
	if _, err := plugintest.StartErr(t, bin, `{"hops": 5, "max_hops": 5, "packet_size": 1024, "max_message_bytes": 1}`); err != nil {
		t.Errorf("edge values must be accepted: %v", err)
	}
}

// TestMixerAndRouterConformance runs the SDK's mixer and router contracts
// on the plugin through the real host, as node 0 of a 5-node test net.
func TestMixerAndRouterConformance(t *testing.T) {
	bin := plugintest.Build(t, ".")
	net := newTestNetAt(t, uint64(time.Now().Unix()/3600), 5, testConfig(), 3, 4)
	start := func(t *testing.T) *plugintest.Plugin {
		c := plugintest.Start(t, bin, `{"hops": 3}`)
		plugintest.CheckInfo(t, c.Info(), sdk.KindMixer)
		plugintest.CheckInfo(t, c.Info(), sdk.KindRouter)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.SetMixState(ctx, net.stateOf(net.nodes[0])); err != nil {
			t.Fatal(err)
		}
		return c
	}
	plugintest.MixerSuite{PacketSize: testConfig().PacketSize, New: func(t *testing.T) sdk.Mixer { return start(t) }}.Run(t)
	plugintest.RouterSuite{
		New:   func(t *testing.T) sdk.Router { return start(t) },
		Rcpts: []string{"b@example.net", "c@example.com"},
		Message: func(rcpts ...string) *sdk.Message {
			m := testMessage(20<<10, 3)
			m.Envelope.RcptTo = rcpts
			return m
		},
	}.Run(t)
}
