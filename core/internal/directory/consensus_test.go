package directory

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

const testEpoch = 10 * time.Second

// testNode makes a node with keys for the current epoch and two ahead and
// returns its descriptor.
func testNode(t testing.TB, name string, now time.Time) *nodes.Descriptor {
	t.Helper()
	dir := t.TempDir()
	id, err := nodes.CreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := nodes.Open(dir, testEpoch, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ks.SetAhead(2)
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	d, err := nodes.Export(id, ks.Published(now), nodes.NodeInfo{Name: name, MixAddress: "127.0.0.1:1", Capabilities: []string{nodes.CapExit}}, now)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// memNode is testNode without files: identity and mix keys for six epochs
// of length epoch, in memory (for benchmarks with many nodes).
func memNode(t testing.TB, name string, now time.Time, epoch time.Duration) *nodes.Descriptor {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	e := nodes.Epoch(now, epoch)
	var keys []sdk.EpochKey
	for i := range uint64(6) {
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		keys = append(keys, sdk.EpochKey{Epoch: e + i, Public: k.PublicKey().Bytes(),
			NotBefore: nodes.EpochStart(e+i, epoch), NotAfter: nodes.EpochStart(e+i+1, epoch).Add(time.Second)})
	}
	d, err := nodes.Export(nodes.NewIdentity(priv), keys, nodes.NodeInfo{Name: name, MixAddress: "127.0.0.1:1", Capabilities: []string{nodes.CapExit}}, now)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type testAuth struct {
	Authority
	key ed25519.PrivateKey
}

func testAuthorities(t testing.TB, n int) ([]testAuth, []Authority) {
	var ta []testAuth
	var as []Authority
	for i := range n {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		a := Authority{Name: fmt.Sprintf("auth%d", i+1), Identity: pub, Address: "127.0.0.1:1"}
		ta = append(ta, testAuth{a, priv})
		as = append(as, a)
	}
	return ta, as
}

var testParams = Params{EpochSeconds: int64(testEpoch / time.Second), PacketSize: 2048, SendRate: 1}

// signedConsensus tallies votes of every authority over descs for the
// epoch after now's and has the first `signers` authorities sign it.
func signedConsensus(t testing.TB, auths []testAuth, signers int, now time.Time, descs ...*nodes.Descriptor) *Consensus {
	t.Helper()
	e := nodes.Epoch(now, testEpoch)
	var votes []*Vote
	for _, a := range auths {
		v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: descs}
		if err := v.Sign(a.key); err != nil {
			t.Fatal(err)
		}
		if err := VerifyVote(v, a.Authority, e); err != nil {
			t.Fatal(err)
		}
		votes = append(votes, v)
	}
	c, err := Tally(e, len(auths), votes)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auths[:signers] {
		if err := c.Sign(a.key); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func encode(t testing.TB, c *Consensus) []byte {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConsensusSignedByMajorityIsAccepted(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	c := signedConsensus(t, ta, 2, now, testNode(t, "a", now), testNode(t, "b", now))
	v, err := VerifyConsensus(encode(t, c), as, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if v.Directory.Len() != 2 || len(v.Signers) != 2 {
		t.Fatalf("got %d nodes, signers %v; want 2 nodes, 2 signers", v.Directory.Len(), v.Signers)
	}
}

func TestConsensusSignedByMinorityIsRefused(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	c := signedConsensus(t, ta, 1, now, testNode(t, "a", now))
	// A signature by a key that is not an authority of this network does
	// not count either.
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	c.Sign(stranger)
	_, err := VerifyConsensus(encode(t, c), as, 0, now)
	if !errors.Is(err, ErrMinority) || !strings.Contains(err.Error(), "signed by 1 of 3 authorities") {
		t.Fatalf("got %v, want ErrMinority saying 1 of 3", err)
	}
}

func TestReplayedOlderConsensusIsRefused(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	old := signedConsensus(t, ta, 3, now, testNode(t, "a", now))
	_, err := VerifyConsensus(encode(t, old), as, old.Epoch+1, now)
	if !errors.Is(err, ErrRollback) {
		t.Fatalf("got %v, want ErrRollback", err)
	}
	// And once its window ended it is expired, whatever the node saw.
	_, err = VerifyConsensus(encode(t, old), as, 0, old.ValidUntil)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("got %v, want ErrExpired", err)
	}
	// Through the client: after a newer one is in use, the older is refused.
	c, _ := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch})
	newer := signedConsensus(t, ta, 3, now.Add(testEpoch), testNode(t, "a", now))
	if err := c.Accept(encode(t, newer), newer.ValidAfter); err != nil {
		t.Fatal(err)
	}
	if err := c.Accept(encode(t, old), newer.ValidAfter); !errors.Is(err, ErrRollback) {
		t.Fatalf("client accepted the older consensus: %v", err)
	}
}

// TestCurrentConsensusIsTakenAfterTheNext: a node that starts late in an
// epoch fetches the next epoch's consensus and the current one; the next,
// fetched first, does not make the current one a rollback (the node had
// no consensus in use, and held its mail, until the next epoch began).
func TestCurrentConsensusIsTakenAfterTheNext(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	cur := signedConsensus(t, ta, 3, now, testNode(t, "a", now))
	next := signedConsensus(t, ta, 3, now.Add(testEpoch), testNode(t, "a", now))
	c, _ := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch})
	if err := c.Accept(encode(t, next), now); err != nil {
		t.Fatal(err)
	}
	if err := c.Accept(encode(t, cur), now); err != nil {
		t.Fatalf("the current consensus refused while only the next is held: %v", err)
	}
	if v := c.Current(); v == nil || v.Epoch != cur.Epoch {
		t.Fatalf("consensus in use %+v, want epoch %d", v, cur.Epoch)
	}
}

func TestConsensusWithForgedDescriptorIsRefused(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	d := testNode(t, "a", now)
	forged := *d
	forged.MixAddress = "127.0.0.1:2" // not what the node signed
	c := signedConsensus(t, ta, 3, now, &forged)
	_, err := VerifyConsensus(encode(t, c), as, 0, now)
	if !errors.Is(err, ErrBadDescriptor) || !errors.Is(err, nodes.ErrForged) {
		t.Fatalf("got %v, want ErrBadDescriptor wrapping nodes.ErrForged", err)
	}
}

func TestMixedConsensusIsRefused(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	a, b := testNode(t, "a", now), testNode(t, "b", now)
	one := signedConsensus(t, ta, 3, now, a)
	two := signedConsensus(t, ta, 3, now, a, b)
	// The nodes of one document with the signatures of another.
	mixed := *two
	mixed.Signatures = one.Signatures
	_, err := VerifyConsensus(encode(t, &mixed), as, 0, now)
	if !errors.Is(err, ErrMinority) || !strings.Contains(err.Error(), "do not verify over this document") {
		t.Fatalf("got %v, want ErrMinority naming signatures that do not verify", err)
	}
	// Half the signatures of each: still no majority over either.
	mixed.Signatures = append(one.Signatures[:1:1], two.Signatures[1])
	if _, err := VerifyConsensus(encode(t, &mixed), as, 0, now); !errors.Is(err, ErrMinority) {
		t.Fatalf("got %v, want ErrMinority", err)
	}
}

func TestTallyIncludesOnlyNodesAMajorityVotedFor(t *testing.T) {
	now := time.Now()
	ta, _ := testAuthorities(t, 3)
	a, b := testNode(t, "a", now), testNode(t, "b", now)
	e := nodes.Epoch(now, testEpoch)
	// b is reached by one authority only (an on-path adversary blocks it
	// from the others, or it is down).
	views := [][]*nodes.Descriptor{{a, b}, {a}, {a}}
	var votes []*Vote
	for i, auth := range ta {
		v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: views[i]}
		v.Sign(auth.key)
		votes = append(votes, v)
	}
	c, err := Tally(e, 3, votes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 1 || c.Nodes[0].ID != a.ID {
		t.Fatalf("consensus has %d nodes, want only a", len(c.Nodes))
	}
	// Two votes of three still make a consensus; one does not.
	if _, err := Tally(e, 3, votes[:2]); err != nil {
		t.Fatalf("two of three votes: %v", err)
	}
	if _, err := Tally(e, 3, votes[:1]); !errors.Is(err, ErrNoMajority) {
		t.Fatalf("one of three votes: got %v, want ErrNoMajority", err)
	}
	// Every authority tallying the same votes makes the same document,
	// whatever the order of the votes.
	c2, _ := Tally(e, 3, []*Vote{votes[2], votes[0], votes[1]})
	d1, _ := c.Digest()
	d2, _ := c2.Digest()
	if d1 != d2 {
		t.Fatal("tallies of the same votes differ")
	}
}

func TestVoteWithAlteredContentIsRefused(t *testing.T) {
	now := time.Now()
	ta, _ := testAuthorities(t, 2)
	e := nodes.Epoch(now, testEpoch)
	v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: []*nodes.Descriptor{testNode(t, "a", now)}}
	v.Sign(ta[0].key)
	v.Params.PacketSize = 4096
	if err := VerifyVote(v, ta[0].Authority, e); err == nil {
		t.Fatal("altered vote verified")
	}
	v.Params.PacketSize = testParams.PacketSize
	if err := VerifyVote(v, ta[1].Authority, e); err == nil {
		t.Fatal("vote verified as another authority's")
	}
	if err := VerifyVote(v, ta[0].Authority, e); err != nil {
		t.Fatalf("vote as signed: %v", err)
	}
}

func mustJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A consensus whose nodes are of another Sphinx format than its
// parameters name is refused, even when all its nodes agree with each
// other.
func TestConsensusWithNodeOfOtherSphinxFormatIsRefused(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	dir := t.TempDir()
	id, err := nodes.CreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := nodes.OpenFormat(dir, testEpoch, time.Second, mixkey.XWing)
	if err != nil {
		t.Fatal(err)
	}
	ks.SetAhead(2)
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	xw, err := nodes.Export(id, ks.Published(now), nodes.NodeInfo{Name: "pq", MixAddress: "127.0.0.1:1", Capabilities: []string{nodes.CapExit}}, now)
	if err != nil {
		t.Fatal(err)
	}
	c := signedConsensus(t, ta, 3, now, xw)
	_, err = VerifyConsensus(encode(t, c), as, 0, now)
	if !errors.Is(err, nodes.ErrWrongFormat) {
		t.Fatalf("consensus of an x25519 network with an xwing node: got %v, want %v", err, nodes.ErrWrongFormat)
	}
}

// A careless operator lists one authority twice (a pasted line): its one
// signature must not count as two and make a "majority" of three.
func TestAuthorityListedTwiceCountsOnce(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 2)
	c := signedConsensus(t, ta, 1, now, testNode(t, "a", now))
	twice := []Authority{as[0], {Name: "auth1-again", Identity: as[0].Identity, Address: "127.0.0.1:2"}, as[1]}
	_, err := VerifyConsensus(encode(t, c), twice, 0, now)
	if !errors.Is(err, ErrMinority) {
		t.Fatalf("one authority's signature, listed twice among three: got %v, want ErrMinority", err)
	}
	if _, err := NewClient(ClientConfig{Authorities: twice, Epoch: testEpoch}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("client with an authority key listed twice: got %v, want an error naming it", err)
	}
}

// A node's name is its operator's label, not an identity: a malicious node
// that takes an honest node's name (and grinds an id that sorts first)
// must not push the honest node out of the consensus.
func TestNodeWithAnotherNodesNameDoesNotEvictIt(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	honest := testNode(t, "mix1", now)
	var impostor *nodes.Descriptor
	for impostor == nil || impostor.ID > honest.ID {
		impostor = memNode(t, "mix1", now, testEpoch)
	}
	c := signedConsensus(t, ta, 3, now, honest, impostor)
	v, err := VerifyConsensus(encode(t, c), as, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := NodeID(honest)
	if _, ok := v.Directory.Lookup(id); !ok {
		t.Fatalf("the honest node is not in the consensus (%d nodes): a namesake evicted it", v.Directory.Len())
	}
	if v.Directory.Len() != 2 {
		t.Fatalf("%d nodes, want both", v.Directory.Len())
	}
}
