package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// testEpoch is the current epoch of a test network; epochs are one hour.
const testEpoch = 480000

// epochStart is when epoch e begins (1-hour epochs, as in docs/mixnet.md).
func epochStart(e uint64) time.Time { return time.Unix(int64(e)*3600, 0) }

// testNode is one fake mix node: an id, its X25519 keys per epoch and its
// own sphinx stage (as each real node runs its own plugin process).
type testNode struct {
	id      sdk.NodeID
	name    string
	exit    bool
	news    bool // capability mail2news
	healthy bool
	keys    map[uint64]*ecdh.PrivateKey
	// xkeys are the node's X-Wing keys per epoch, in place of keys' for
	// the directory and the key files, when the config's sphinx_format is
	// xwing (keys then only lists the epochs).
	xkeys map[uint64]*mixkey.Key
	stage *Stage
	// dir is the node's key directory: stateOf writes its key files there
	// (the core's job), the stage reads them (MixState.KeyDir).
	dir string
}

// testNet is a directory of fake nodes with generated keys for the epochs
// testEpoch-1 .. testEpoch+1, all healthy, the ones in exits exit-capable.
// Every node's stage has had SetMixState with its own keys and the
// directory. now is the clock of every stage.
type testNet struct {
	t     testing.TB
	cfg   Config
	epoch uint64
	now   time.Time
	nodes []*testNode
	byID  map[sdk.NodeID]*testNode
}

func testConfig() Config {
	c := defaults
	return c
}

// x25519Format is the default config's packet format.
var x25519Format = defaults.format()

func newTestNet(t testing.TB, n int, cfg Config, exits ...int) *testNet {
	t.Helper()
	return newTestNetAt(t, testEpoch, n, cfg, exits...)
}

// newTestNetAt is newTestNet at epoch (keys for epoch-1 .. epoch+1), with
// the clock 20 minutes into it.
func newTestNetAt(t testing.TB, epoch uint64, n int, cfg Config, exits ...int) *testNet {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	net := &testNet{t: t, cfg: cfg, epoch: epoch, now: epochStart(epoch).Add(20 * time.Minute), byID: map[sdk.NodeID]*testNode{}}
	isExit := map[int]bool{}
	for _, e := range exits {
		isExit[e] = true
	}
	for i := range n {
		nd := &testNode{name: fmt.Sprintf("node%d", i), exit: isExit[i], healthy: true, keys: map[uint64]*ecdh.PrivateKey{}}
		nd.id = sha256.Sum256([]byte(nd.name))
		nd.dir = t.TempDir()
		for e := epoch - 1; e <= epoch+1; e++ {
			k, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			nd.keys[e] = k
			if cfg.SphinxFormat == "xwing" {
				if nd.xkeys == nil {
					nd.xkeys = map[uint64]*mixkey.Key{}
				}
				if nd.xkeys[e], err = mixkey.GenerateXWing(rand.Reader); err != nil {
					t.Fatal(err)
				}
			}
		}
		nd.stage = newStageWith(cfg, rand.Reader, func() time.Time { return net.now }, nil)
		net.nodes = append(net.nodes, nd)
		net.byID[nd.id] = nd
	}
	net.push()
	return net
}

// epochKey is node nd's key of epoch e as the directory and the node see
// it: valid from the epoch's start to its end plus a 10-minute grace.
func (nd *testNode) epochKey(e uint64) sdk.EpochKey {
	pub := nd.keys[e].PublicKey().Bytes()
	if x := nd.xkeys[e]; x != nil {
		pub = x.Public()
	}
	return sdk.EpochKey{Epoch: e, Public: pub, NotBefore: epochStart(e), NotAfter: epochStart(e + 1).Add(10 * time.Minute)}
}

// writeKeys writes nd's private keys to its key directory, as the core's
// key store does.
func (nd *testNode) writeKeys(t testing.TB) {
	t.Helper()
	for e, k := range nd.keys {
		key, err := mixkey.New(k.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if x := nd.xkeys[e]; x != nil {
			key = x
		}
		ek := nd.epochKey(e)
		data := mixkey.Encode(key, mixkey.Meta{Epoch: e, NotBefore: ek.NotBefore, NotAfter: ek.NotAfter})
		if err := os.WriteFile(filepath.Join(nd.dir, fmt.Sprintf("mix-%d.key", e)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// directory is the directory every node gets.
func (net *testNet) directory() []sdk.DirectoryNode {
	var dir []sdk.DirectoryNode
	for _, nd := range net.nodes {
		dn := sdk.DirectoryNode{ID: nd.id, Name: nd.name, Exit: nd.exit, Healthy: nd.healthy}
		if nd.news {
			dn.Capabilities = []string{sdk.CapMail2News}
		}
		for e := range nd.keys {
			dn.Keys = append(dn.Keys, nd.epochKey(e))
		}
		dir = append(dir, dn)
	}
	return dir
}

// stateOf is node nd's MixState: its keys of every epoch it holds.
func (net *testNet) stateOf(nd *testNode) sdk.MixState {
	nd.writeKeys(net.t)
	st := sdk.MixState{Epoch: net.epoch, Self: nd.id, Nodes: net.directory(), KeyDir: nd.dir}
	for e := range nd.keys {
		st.Keys = append(st.Keys, nd.epochKey(e))
	}
	return st
}

// push sends every node its MixState, as the core does.
func (net *testNet) push() {
	net.t.Helper()
	for _, nd := range net.nodes {
		if err := nd.stage.SetMixState(context.Background(), net.stateOf(nd)); err != nil {
			net.t.Fatalf("SetMixState %s: %v", nd.name, err)
		}
	}
}

// hop is one step of a packet's travel: the node that mixed it and what
// it returned.
type hop struct {
	node *testNode
	res  *sdk.MixResult
}

// travel runs a packet from its first hop through Mix at each node until
// it exits, is dropped or fails; it returns the steps and the error of the
// failing Mix (nil if none failed).
func (net *testNet) travel(first sdk.NodeID, pkt []byte) ([]hop, error) {
	net.t.Helper()
	var steps []hop
	at := first
	for range sphinx.MaxHopsLimit + 1 {
		nd := net.byID[at]
		if nd == nil {
			net.t.Fatalf("packet sent to unknown node %s", at.Short())
		}
		res, err := nd.stage.Mix(context.Background(), pkt)
		if err != nil {
			return steps, err
		}
		steps = append(steps, hop{node: nd, res: res})
		if res.Action != sdk.MixForward {
			return steps, nil
		}
		if len(res.Packet) != len(pkt) {
			net.t.Fatalf("forwarded packet of %d bytes, received %d", len(res.Packet), len(pkt))
		}
		at, pkt = res.NextHop, res.Packet
	}
	net.t.Fatalf("packet still forwarded after %d hops", sphinx.MaxHopsLimit+1)
	return nil, nil
}

// deliverAll runs every route through the network and returns the
// fragments that exited, by index, with the path each took. It fails the
// test if a packet does not end in a fragment exit.
func (net *testNet) deliverAll(routes []sdk.Route) ([]*sdk.Fragment, [][]*testNode) {
	net.t.Helper()
	frags := make([]*sdk.Fragment, len(routes))
	paths := make([][]*testNode, len(routes))
	for _, r := range routes {
		steps, err := net.travel(r.NextHop, r.Body)
		if err != nil {
			net.t.Fatalf("packet failed after %d hops: %v", len(steps), err)
		}
		last := steps[len(steps)-1].res
		if last.Action != sdk.MixExit || last.Fragment == nil {
			net.t.Fatalf("packet ended with action %d, want MixExit with a fragment", last.Action)
		}
		f := last.Fragment
		if f.Count != len(routes) || f.Index < 0 || f.Index >= f.Count || frags[f.Index] != nil {
			net.t.Fatalf("fragment %d of %d (routes %d): wrong or repeated index", f.Index, f.Count, len(routes))
		}
		frags[f.Index] = f
		for _, s := range steps {
			paths[f.Index] = append(paths[f.Index], s.node)
		}
	}
	return frags, paths
}

// concat joins fragments' data in index order, as the core does.
func concat(frags []*sdk.Fragment) []byte {
	var b bytes.Buffer
	for _, f := range frags {
		b.Write(f.Data)
	}
	return b.Bytes()
}

// testMessage builds a message of about size bytes (header + body) with a
// deterministic pseudo-random binary body.
// padToClass appends the zero padding of inner's size class (SPEC.md §14.3).
func padToClass(s *Stage, inner []byte) []byte {
	count := (len(inner) + s.fragData - 1) / s.fragData
	return append(bytes.Clone(inner), make([]byte, sizeClass(count, s.maxFragments)*s.fragData-len(inner))...)
}

func testMessage(size int, seed uint64) *sdk.Message {
	header := []byte("From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\r\n")
	body := make([]byte, max(size-len(header), 0))
	mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(body)
	return &sdk.Message{
		ID:       "0123456789abcdef0123456789abcdef",
		Envelope: sdk.Envelope{MailFrom: "sender@example.org", RcptTo: []string{"b@example.net", "c@example.com"}, BodyType: sdk.Body8BitMIME},
		Header:   header, Body: body, Size: int64(len(header) + len(body)),
	}
}

// wantPermanent fails unless err is a permanent *sdk.Error whose text
// contains substr.
func wantPermanent(t testing.TB, err error, substr string) {
	t.Helper()
	var e *sdk.Error
	if err == nil || !errors.As(err, &e) || e.Temporary {
		t.Fatalf("want a permanent *sdk.Error containing %q, got %v", substr, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("want error containing %q, got %q", substr, err)
	}
}

// wantTemporary fails unless err is a temporary *sdk.Error containing substr.
func wantTemporary(t testing.TB, err error, substr string) {
	t.Helper()
	var e *sdk.Error
	if err == nil || !errors.As(err, &e) || !e.Temporary {
		t.Fatalf("want a temporary *sdk.Error containing %q, got %v", substr, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("want error containing %q, got %q", substr, err)
	}
}
