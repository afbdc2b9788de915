package directory

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk"
)

// hostileAuthority serves body for every GET, as a malicious authority or
// an on-path attacker on the unauthenticated HTTP channel would.
func hostileAuthority(t *testing.T, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(body)) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// A consensus or vote whose node list holds a JSON null was dereferenced
// while computing its digest, before any signature check: anyone on the
// path to an authority crashed every node that fetched a consensus, and
// every authority that fetched a vote. Each is now refused as malformed.
func TestNullDescriptorIsRefusedNotAPanic(t *testing.T) {
	e := uint64(5)
	va, vu := Window(e, testEpoch)
	consensus := `{"version":1,"epoch":5,"valid_after":"` + va.UTC().Format(time.RFC3339) + `","valid_until":"` + vu.UTC().Format(time.RFC3339) +
		`","params":{"epoch_seconds":10,"packet_size":2048,"send_rate":1,"drop_rate":0,"loop_rate":0},"nodes":[null]}`

	// A node fetching the consensus from a hostile authority.
	_, as := testAuthorities(t, 3)
	as[0].Address = hostileAuthority(t, consensus)
	c, err := NewClient(ClientConfig{Authorities: as[:1], Epoch: testEpoch})
	if err != nil {
		t.Fatal(err)
	}
	c.fetch(context.Background(), e) // panicked
	if err := c.Accept([]byte(consensus), va); !errors.Is(err, ErrMalformed) {
		t.Fatalf("consensus with a null node: got %v, want ErrMalformed", err)
	}
	if c.Current() != nil {
		t.Fatal("the hostile consensus is in use")
	}

	// An authority fetching the vote of a hostile peer.
	ta, as := testAuthorities(t, 2)
	vote := `{"version":1,"epoch":5,"authority":"` + b64(as[1].Identity) + `","params":{"epoch_seconds":10,"packet_size":2048,"send_rate":1,"drop_rate":0,"loop_rate":0},"nodes":[null],"signature":"` + b64(make([]byte, 64)) + `"}`
	as[1].Address = hostileAuthority(t, vote)
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	r := &round{votes: map[string]*Vote{}}
	a.fetchVotes(context.Background(), e, r) // panicked
	if len(r.votes) != 0 {
		t.Fatal("the hostile vote was taken")
	}
	// Signed by the authority itself (a malicious authority): refused too.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: nil}
	v.Nodes = append(v.Nodes, nil)
	if err := v.Sign(priv); err == nil {
		if err := VerifyVote(v, Authority{Name: "x", Identity: priv.Public().(ed25519.PublicKey)}, e); !errors.Is(err, ErrMalformed) {
			t.Fatalf("signed vote with a null node: got %v, want ErrMalformed", err)
		}
	}
}

// An epoch length that overflows time.Duration (2^33 s) made the epoch
// arithmetic panic before any signature check; it is refused as malformed.
func TestHugeEpochLengthIsRefusedNotAPanic(t *testing.T) {
	_, as := testAuthorities(t, 3)
	doc := `{"version":1,"epoch":5,"valid_after":"1970-01-01T00:00:00Z","valid_until":"1970-01-01T00:00:00Z","params":{"epoch_seconds":9223372037,"packet_size":2048,"send_rate":1,"drop_rate":0,"loop_rate":0},"nodes":[]}`
	if _, err := VerifyConsensus([]byte(doc), as, 0, time.Now()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
	// Tallied votes with such parameters make no consensus either.
	v := &Vote{Version: Version, Epoch: 5, Params: Params{EpochSeconds: 9223372037}, Nodes: nil}
	if _, err := Tally(5, 1, []*Vote{v}); !errors.Is(err, ErrNoMajority) {
		t.Fatalf("tally: got %v, want ErrNoMajority", err)
	}
}

// A node (malicious, or with its clock ahead) publishes its descriptor
// nearly MaxClockSkew ahead of the authorities' clocks; they accept it.
// A node whose clock is a little behind theirs fetches the consensus soon
// after (the bootstrap round, short epochs): it must not refuse the whole
// document, signed by a majority, for that one descriptor, and hold its
// mail for an epoch.
func TestDescriptorPublishedAheadDoesNotSinkTheConsensus(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	ahead := now.Add(nodes.MaxClockSkew - time.Second)
	early := testNode(t, "early", ahead)
	honest := testNode(t, "honest", now)
	c := signedConsensus(t, ta, 3, now, honest, early)
	behind := now.Add(-2 * time.Minute) // the verifying node's clock
	v, err := VerifyConsensus(encode(t, c), as, 0, behind)
	if err != nil {
		t.Fatalf("consensus refused for one descriptor published ahead: %v", err)
	}
	if v.Directory.Len() != 2 {
		t.Fatalf("%d nodes, want 2", v.Directory.Len())
	}
	// A forged descriptor is still refused (the control).
	forged := *early
	forged.MixAddress = "127.0.0.1:2"
	c = signedConsensus(t, ta, 3, now, honest, &forged)
	if _, err := VerifyConsensus(encode(t, c), as, 0, behind); !errors.Is(err, nodes.ErrForged) {
		t.Fatalf("forged descriptor: got %v, want ErrForged", err)
	}
}

// An attacker fills an authority with descriptors of nodes that do not
// exist (fresh keys are free): the authority held them forever and
// answered every later node "directory full", so no honest node could
// join. Nodes it never reached make room; a node it reached is kept.
func TestUploadFloodDoesNotLockOutNewNodes(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams,
		Probe: func(_ context.Context, n *nodes.Node) error {
			if strings.HasPrefix(n.Name, "honest") {
				return nil
			}
			return errors.New("connection refused")
		}})
	if err != nil {
		t.Fatal(err)
	}
	a.maxNodes = 3
	upload := func(d *nodes.Descriptor) int {
		w := httptest.NewRecorder()
		a.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/descriptor", strings.NewReader(mustJSON(t, d))))
		return w.Code
	}
	probed := func(d *nodes.Descriptor, reached bool) func() bool {
		id, _ := NodeID(d)
		return func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			if reached {
				return !a.reached[id].IsZero()
			}
			return !a.failed[id].IsZero()
		}
	}
	honest1 := memNode(t, "honest1", now, testEpoch)
	if code := upload(honest1); code != http.StatusNoContent {
		t.Fatalf("first upload: %d", code)
	}
	waitFor(t, 10*time.Second, "probe of honest1", probed(honest1, true))
	for i := range 2 {
		fake := memNode(t, fmt.Sprintf("fake%d", i), now, testEpoch)
		if code := upload(fake); code != http.StatusNoContent {
			t.Fatalf("fake upload %d: %d", i, code)
		}
		waitFor(t, 10*time.Second, "failed probe of a fake node", probed(fake, false))
	}
	honest2 := memNode(t, "honest2", now, testEpoch)
	if code := upload(honest2); code != http.StatusNoContent {
		t.Fatalf("honest node after a flood of fake ones: %d, want 204", code)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id1, _ := NodeID(honest1)
	id2, _ := NodeID(honest2)
	if a.received[id1] == nil || a.received[id2] == nil || len(a.received) != 3 {
		t.Fatalf("held %d nodes; the reached node or the new one is missing", len(a.received))
	}
}

// A malicious authority (auth3) gives its vote to auth1 and withholds it
// from auth2, then signs both tallies: two documents for one epoch, each
// signed by a majority (auth1+auth3, auth2+auth3). A node that took the
// first one it fetched used one or the other at random, which splits the
// network's users into two views. Every node now fetches from every
// authority and keeps, of documents for one epoch, the one with the
// smallest digest, naming the authorities that signed both.
func TestEquivocatedConsensusDoesNotSplitTheNodes(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	a, b := testNode(t, "a", now), testNode(t, "b", now)
	e := nodes.Epoch(now, testEpoch)
	one, two := equivocation(t, ta, e, a, b)
	d1, _ := one.Digest()
	d2, _ := two.Digest()
	if d1 == d2 {
		t.Fatal("the two tallies are the same document")
	}
	want := d1
	if bytes.Compare(d2[:], d1[:]) < 0 {
		want = d2
	}
	served := []*Consensus{one, two, one}
	for i := range as {
		as[i].Address = hostileAuthority(t, mustJSON(t, served[i]))
	}
	var logs bytes.Buffer
	for i := range 12 {
		c, err := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch, Log: hclog.New(&hclog.LoggerOptions{Output: &logs})})
		if err != nil {
			t.Fatal(err)
		}
		c.fetch(context.Background(), e)
		v := c.Current()
		if v == nil {
			t.Fatalf("node %d: no consensus", i)
		}
		if dg, _ := v.Digest(); dg != want {
			t.Fatalf("node %d uses the document of digest %x, another node %x: the nodes are split", i, dg[:4], want[:4])
		}
	}
	if !strings.Contains(logs.String(), "auth3") || !strings.Contains(logs.String(), "two consensus documents") {
		t.Fatalf("the equivocating authority is not named:\n%s", logs.String())
	}
}

// A node re-uploads its descriptor again and again, each time a little
// newer (it signs them itself): every upload started a probe of the
// address it names, so an authority could be made to open any number of
// connections at once to any address. One probe per node at a time.
func TestReuploadsDoNotMultiplyProbes(t *testing.T) {
	ta, as := testAuthorities(t, 3)
	release := make(chan struct{})
	var running, most atomic.Int32
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams,
		Probe: func(ctx context.Context, n *nodes.Node) error {
			r := running.Add(1)
			defer running.Add(-1)
			for m := most.Load(); r > m && !most.CompareAndSwap(m, r); m = most.Load() {
			}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer close(release)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := nodes.NewIdentity(priv)
	now := time.Now()
	e := nodes.Epoch(now, testEpoch)
	var keys []sdk.EpochKey
	for i := range uint64(6) {
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		keys = append(keys, sdk.EpochKey{Epoch: e + i, Public: k.PublicKey().Bytes(), NotBefore: nodes.EpochStart(e+i, testEpoch), NotAfter: nodes.EpochStart(e+i+1, testEpoch)})
	}
	for i := range 20 {
		d, err := nodes.Export(id, keys, nodes.NodeInfo{Name: "flood", MixAddress: "192.0.2.1:9"}, now.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		a.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/descriptor", strings.NewReader(mustJSON(t, d))))
		if w.Code != http.StatusNoContent {
			t.Fatalf("upload %d: %d %s", i, w.Code, w.Body)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if m := most.Load(); m != 1 {
		t.Fatalf("%d probes of one node at once, want 1", m)
	}
}

// A malicious authority signs a vote with a forged descriptor at its end
// (and up to MaxBody of valid ones before it): the vote was fetched and
// every descriptor verified again at every step of the tally window. It
// signed it, so it is refused once for the round and not fetched again.
func TestSignedBadVoteIsNotFetchedAgain(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 2)
	e := nodes.Epoch(now, testEpoch)
	good := testNode(t, "a", now)
	forged := *testNode(t, "b", now)
	forged.MixAddress = "127.0.0.1:2"
	v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: []*nodes.Descriptor{good, &forged}}
	v.Sign(ta[1].key)
	body := mustJSON(t, v)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Write([]byte(body))
	}))
	defer srv.Close()
	as[1].Address = strings.TrimPrefix(srv.URL, "http://")
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	r := &round{votes: map[string]*Vote{}}
	for range 3 {
		a.fetchVotes(context.Background(), e, r)
	}
	if len(r.votes) != 0 {
		t.Fatal("the vote with a forged descriptor was taken")
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("the signed bad vote was fetched %d times in one round, want 1", n)
	}
}

// Descriptors of up to 256 KiB (a thousand mix keys) from nodes that
// never run, up to MaxNodes of them: 2.5 GB an authority held for the
// price of fresh keys. What it holds is bounded in bytes too; beyond it,
// "directory full" until unreached nodes make room.
func TestHugeDescriptorsAreBoundedInBytes(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := range 5 {
		bodies = append(bodies, mustJSON(t, memNode(t, fmt.Sprintf("big%d", i), now, testEpoch)))
	}
	a.maxBytes = 3*len(bodies[0]) + len(bodies[0])/2
	var codes []int
	for _, b := range bodies {
		w := httptest.NewRecorder()
		a.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/descriptor", strings.NewReader(b)))
		codes = append(codes, w.Code)
	}
	want := []int{204, 204, 204, 503, 503}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("uploads answered %v, want %v", codes, want)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.heldBytes > a.maxBytes || len(a.received) != 3 {
		t.Fatalf("holds %d descriptors, %d bytes, bound %d", len(a.received), a.heldBytes, a.maxBytes)
	}
}

// Rollback across a restart: a node that stored the consensus of epoch E
// refuses E-1, still valid, after it restarts (a check that holds; it
// fails if the stored epoch is not read back).
func TestRestartedNodeRefusesOlderConsensus(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	state := t.TempDir() + "/consensus.json"
	old := signedConsensus(t, ta, 3, now.Add(-testEpoch), testNode(t, "a", now))
	newer := signedConsensus(t, ta, 3, now, testNode(t, "a", now))
	c, _ := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch, StateFile: state})
	if err := c.Accept(encode(t, newer), now); err != nil {
		t.Fatal(err)
	}
	c2, err := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Accept(encode(t, old), now); !errors.Is(err, ErrRollback) {
		t.Fatalf("restarted node took the older consensus: %v", err)
	}
}

// The same equivocation seen from an honest authority: it published its
// tally (signed by itself and the equivocating authority), and a peer
// publishes another, also signed by a majority. Every honest authority
// then serves the one with the smaller digest (without signing it), so
// that nodes that reach only some authorities still get the same one.
func TestAuthorityServesTheSameDocumentAsItsPeersAfterEquivocation(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	a, b := testNode(t, "a", now), testNode(t, "b", now)
	e := nodes.Epoch(now, testEpoch)
	one, two := equivocation(t, ta, e, a, b)
	d1, _ := one.Digest()
	d2, _ := two.Digest()
	// auth1 holds the document with the greater digest, its peer auth2
	// publishes the other.
	mine, theirs, want := one, two, d2
	if bytes.Compare(d1[:], d2[:]) < 0 {
		mine, theirs, want = two, one, d1
		mine.Signatures = nil
		mine.Sign(ta[0].key)
		mine.Sign(ta[2].key)
		theirs.Signatures = nil
		theirs.Sign(ta[1].key)
		theirs.Sign(ta[2].key)
	}
	as[1].Address = hostileAuthority(t, mustJSON(t, theirs))
	as[2].Address = "127.0.0.1:1"
	srv, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams, Log: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	dm, _ := mine.Digest()
	srv.rounds[e] = &round{votes: map[string]*Vote{}, tally: mine, digest: dm, published: true}
	srv.compareConsensus(context.Background(), e, srv.rounds[e])
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, fmt.Sprintf("/v1/consensus/%d", e), nil))
	v, err := VerifyConsensus(w.Body.Bytes(), as, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if dg, _ := v.Digest(); dg != want {
		t.Fatalf("auth1 serves the document of digest %x, its peer %x", dg[:4], want[:4])
	}
	for _, s := range v.Signatures {
		if s.Authority == b64(as[0].Identity) {
			t.Fatal("auth1 signed its peer's document too: it would equivocate itself")
		}
	}
}

// equivocation returns the two documents for epoch e that auth3 (ta[2])
// makes by giving its vote (for node b) to auth1 and withholding it from
// auth2, then signing both tallies: one signed by auth1 and auth3 (it
// lists a and b), the other by auth2 and auth3 (a only); each is signed
// by a majority of the three.
func equivocation(t *testing.T, ta []testAuth, e uint64, a, b *nodes.Descriptor) (one, two *Consensus) {
	t.Helper()
	tally := func(views [][]*nodes.Descriptor, signers ...int) *Consensus {
		var votes []*Vote
		for i, v := range views {
			vt := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: v}
			vt.Sign(ta[i].key)
			votes = append(votes, vt)
		}
		c, err := Tally(e, 3, votes)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range signers {
			c.Sign(ta[s].key)
		}
		return c
	}
	return tally([][]*nodes.Descriptor{{a, b}, {a}, {b}}, 0, 2), tally([][]*nodes.Descriptor{{a, b}, {a}}, 1, 2)
}
