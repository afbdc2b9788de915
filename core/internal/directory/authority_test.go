package directory

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// authNet is n authorities serving the directory protocol on loopback;
// reach decides which nodes each one reaches by probe.
type authNet struct {
	auths   []Authority
	keys    []ed25519.PrivateKey
	servers []*Server
	lns     []net.Listener
}

func startAuthorities(t testing.TB, ctx context.Context, n int, epoch time.Duration, reach func(auth int, node *nodes.Node) bool) *authNet {
	t.Helper()
	a := &authNet{}
	for i := range n {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a.auths = append(a.auths, Authority{Name: fmt.Sprintf("auth%d", i+1), Identity: pub, Address: ln.Addr().String()})
		a.keys = append(a.keys, priv)
		a.lns = append(a.lns, ln)
	}
	for i := range n {
		srv, err := NewServer(AuthorityConfig{
			Key: a.keys[i], Authorities: a.auths, Epoch: epoch, ProbeInterval: epoch / 8,
			Params: Params{EpochSeconds: int64(epoch / time.Second), PacketSize: 2048, SendRate: 1},
			Probe: func(_ context.Context, node *nodes.Node) error {
				if reach(i, node) {
					return nil
				}
				return fmt.Errorf("blocked")
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		a.servers = append(a.servers, srv)
		go srv.Serve(ctx, a.lns[i])
		go srv.Run(ctx)
	}
	return a
}

// startClient runs a node's client uploading d.
func startClient(t testing.TB, ctx context.Context, auths []Authority, epoch time.Duration, d *nodes.Descriptor) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Authorities: auths, Epoch: epoch, StateFile: t.TempDir() + "/consensus.json",
		Descriptor: func(time.Time) (*nodes.Descriptor, error) { return d, nil }})
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	return c
}

func waitFor(t testing.TB, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The authorities' state machine over real HTTP: nodes that upload get a
// consensus signed by all three; a node that only one authority reaches is
// left out of it, though it uploaded to all; a node whose upload is
// forged is refused at upload.
func TestAuthoritiesPublishOneConsensusOfReachedNodes(t *testing.T) {
	const epoch = 4 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now()
	var blockedID atomic.Value
	blockedID.Store("")
	an := startAuthorities(t, ctx, 3, epoch, func(auth int, n *nodes.Node) bool {
		return auth == 0 || n.ID.String() != blockedID.Load().(string)
	})
	descA, descB := memNode(t, "a", now, epoch), memNode(t, "b", now, epoch)
	blockedID.Store(descB.ID)
	ca := startClient(t, ctx, an.auths, epoch, descA)
	startClient(t, ctx, an.auths, epoch, descB)
	// The round under way when the authorities start may close before the
	// uploads: its consensus is empty. An authority publishes once two
	// of three signed, so a node that fetches at once may get two
	// signatures; the next round's, fetched at 7/8 of the epoch after the
	// signatures were exchanged, has all three.
	waitFor(t, 6*epoch, "consensus with nodes signed by all 3", func() bool {
		v := ca.Current()
		return v != nil && v.Directory.Len() > 0 && len(v.Signers) == 3
	})
	v := ca.Current()
	if v.Directory.Len() != 1 || v.Directory.All()[0].Name != "a" {
		t.Errorf("consensus has %d nodes, want only a (b is reached by one authority of three)", v.Directory.Len())
	}

	forged := *memNode(t, "c", now, epoch)
	forged.MixAddress = "127.0.0.1:9"
	resp, err := http.Post("http://"+an.auths[1].Address+"/v1/descriptor", "application/json", strings.NewReader(mustJSON(t, &forged)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged descriptor upload: %s, want 400", resp.Status)
	}
}

// A consensus server that hands out an old document or a minority-signed
// one: the client refuses both and keeps what it has.
func TestClientRefusesReplayedAndMinorityConsensus(t *testing.T) {
	now := time.Now()
	ta, as := testAuthorities(t, 3)
	old := signedConsensus(t, ta, 3, now.Add(-2*testEpoch), testNode(t, "a", now))
	cur := signedConsensus(t, ta, 3, now, testNode(t, "a", now))
	minority := signedConsensus(t, ta, 1, now.Add(testEpoch), testNode(t, "a", now))
	var serve atomic.Pointer[Consensus]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(mustJSON(t, serve.Load())))
	}))
	defer srv.Close()
	for i := range as {
		as[i].Address = strings.TrimPrefix(srv.URL, "http://")
	}
	c, _ := NewClient(ClientConfig{Authorities: as, Epoch: testEpoch})
	serve.Store(cur)
	c.fetch(context.Background(), cur.Epoch)
	if v := c.Current(); v == nil || v.Epoch != cur.Epoch {
		t.Fatal("current consensus not taken")
	}
	for _, bad := range []*Consensus{old, minority} {
		serve.Store(bad)
		if err := c.Accept([]byte(mustJSON(t, bad)), time.Now()); err == nil {
			t.Fatalf("epoch %d with %d signatures accepted", bad.Epoch, len(bad.Signatures))
		}
		c.fetch(context.Background(), bad.Epoch)
		if v := c.Current(); v == nil || v.Epoch != cur.Epoch {
			t.Fatal("a refused document replaced the consensus in use")
		}
	}
}

// BenchmarkTimeToFirstConsensus: from a node's start to its first usable
// consensus, with 3 authorities on loopback and 8 s epochs: "cold" is a
// network that starts with the node (the bootstrap round: about 2 S, S =
// epoch/8; when the node is not reached within S, or the authorities start
// too late in an epoch for it, the next regular round: up to 2 epochs);
// "warm" a node joining a running network (it fetches the current
// consensus at once). Reported as seconds and in epochs.
func BenchmarkTimeToFirstConsensus(b *testing.B) {
	const epoch = 8 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now()
	an := startAuthorities(b, ctx, 3, epoch, func(int, *nodes.Node) bool { return true })
	start := time.Now()
	first := startClient(b, ctx, an.auths, epoch, memNode(b, "first", now, epoch))
	waitFor(b, 4*epoch, "consensus", func() bool { v := first.Current(); return v != nil && v.Directory.Len() > 0 })
	cold := time.Since(start)
	b.ResetTimer()
	var warm time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		c := startClient(b, ctx, an.auths, epoch, memNode(b, fmt.Sprintf("n%d", i), now, epoch))
		waitFor(b, 4*epoch, "consensus", func() bool { return c.Current() != nil })
		warm += time.Since(start)
	}
	b.ReportMetric(cold.Seconds(), "cold-s")
	b.ReportMetric(cold.Seconds()/epoch.Seconds(), "cold-epochs")
	b.ReportMetric(warm.Seconds()/float64(b.N), "warm-s")
}
