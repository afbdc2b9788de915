package directory

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk"
)

// MaxBody is the largest request or response body of the directory
// protocol, bytes (a consensus of 1,000 nodes with three keys each is
// about 1.5 MB).
const MaxBody = 16 << 20

// MaxNodes is the most nodes an authority holds descriptors of.
const MaxNodes = 10000

// maxDescriptor is the largest descriptor upload, bytes.
const maxDescriptor = 256 << 10

// MaxHeldBytes bounds the descriptors an authority holds, bytes of their
// uploads: MaxNodes descriptors of maxDescriptor would be 2.5 GB, for the
// price of fresh keys.
const MaxHeldBytes = 256 << 20

// AuthorityConfig configures a directory authority.
type AuthorityConfig struct {
	// Key is this authority's Ed25519 signing key; its public half must
	// be one of Authorities.
	Key ed25519.PrivateKey
	// Authorities are all the network's authorities, this one included.
	Authorities []Authority
	// Epoch is the epoch length (whole seconds).
	Epoch time.Duration
	// Params are the network parameters this authority votes for.
	Params Params
	// ProbeInterval is the time between two probes of a node.
	ProbeInterval time.Duration
	// Probe reaches node n on its mix link (a pinned TLS handshake); nil
	// error means it was reached. Called concurrently.
	Probe func(ctx context.Context, n *nodes.Node) error
	// Client fetches other authorities' votes and signatures (its
	// transport dials through Tor when Tor is configured).
	Client *http.Client
	Log    hclog.Logger
}

// Server is a running directory authority: an http.Handler for the
// directory protocol and a per-epoch state machine (Run).
type Server struct {
	cfg   AuthorityConfig
	self  int // index of this authority in cfg.Authorities
	peers []Authority

	mu sync.Mutex
	// received holds the latest verified descriptor of each node.
	received map[sdk.NodeID]*nodes.Node
	// reached is when each node last answered a probe; failed when a
	// probe of it last failed.
	reached map[sdk.NodeID]time.Time
	failed  map[sdk.NodeID]time.Time
	// probing holds the nodes with a probe under way: one at a time per
	// node, however often it uploads.
	probing map[sdk.NodeID]bool
	rounds  map[uint64]*round // by the epoch the consensus is for
	// bootEpoch and bootAt: the epoch in which Run started, and when.
	bootEpoch uint64
	bootAt    time.Time

	// maxNodes is MaxNodes (smaller in tests).
	maxNodes int
	// held is the size of each held descriptor's upload, heldBytes their
	// sum, at most maxBytes (MaxHeldBytes).
	held                map[sdk.NodeID]int
	heldBytes, maxBytes int
}

// round is the making of one epoch's consensus.
type round struct {
	vote      *Vote
	votes     map[string]*Vote // by authority key (base64), own included
	tally     *Consensus
	digest    [32]byte
	sig       SignatureMsg
	published bool
	failed    bool
	// refused holds the authorities whose signed vote had bad content:
	// their own doing, not the channel's, so not fetched again.
	refused map[string]bool
	// compared holds the peers whose published consensus was compared
	// with this one (compareConsensus).
	compared map[string]bool
}

// NewServer checks cfg and returns a Server; call Run and Serve.
func NewServer(cfg AuthorityConfig) (*Server, error) {
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("directory: authority: no Ed25519 key")
	}
	if cfg.Epoch < time.Second || cfg.Epoch%time.Second != 0 {
		return nil, fmt.Errorf("directory: authority: epoch %s is not a whole number of seconds", cfg.Epoch)
	}
	if err := CheckAuthorities(cfg.Authorities); err != nil {
		return nil, err
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	a := &Server{cfg: cfg, self: -1, received: map[sdk.NodeID]*nodes.Node{}, reached: map[sdk.NodeID]time.Time{}, failed: map[sdk.NodeID]time.Time{}, probing: map[sdk.NodeID]bool{}, maxNodes: MaxNodes, held: map[sdk.NodeID]int{}, maxBytes: MaxHeldBytes, rounds: map[uint64]*round{}}
	pub := cfg.Key.Public().(ed25519.PublicKey)
	for i, x := range cfg.Authorities {
		if x.Identity.Equal(pub) {
			a.self = i
		} else {
			a.peers = append(a.peers, x)
		}
	}
	if a.self < 0 {
		return nil, errors.New("directory: authority: this node's authority key is not in the list of authorities")
	}
	return a, nil
}

// Run drives the epoch schedule (see the package comment) until ctx ends.
func (a *Server) Run(ctx context.Context) {
	a.bootAt = time.Now()
	a.bootEpoch = nodes.Epoch(a.bootAt, a.cfg.Epoch)
	go a.probeLoop(ctx)
	onTicks(ctx, a.cfg.Epoch, func(now time.Time) { a.step(ctx, now) })
}

// onTicks calls step at once and then every 1/32 of an epoch (at most a
// second apart) until ctx ends: the schedule authorities and nodes check
// what is due in the epoch on.
func onTicks(ctx context.Context, epoch time.Duration, step func(now time.Time)) {
	tick := time.NewTicker(min(epoch/32, time.Second))
	defer tick.Stop()
	for {
		step(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// step performs what is due at now for the consensus of the next epoch
// and, in the authority's first epoch, for the bootstrap consensus.
func (a *Server) step(ctx context.Context, now time.Time) {
	p := a.cfg.Epoch
	e := nodes.Epoch(now, p)
	start := nodes.EpochStart(e, p)
	s := bootSettle(p)
	since := now.Sub(a.bootAt)
	if since >= s {
		// Not before the nodes had time to upload and be reached: a vote
		// right at the start would be empty.
		a.advance(ctx, e+1, now.Sub(start), p/2, 5*p/8, 6*p/8, start)
	}
	if since < 4*s {
		// A network that starts has no consensus for the epoch under way
		// and would wait up to two epochs for one: the authorities make
		// one for the epoch they started in right away, with the same
		// steps on a short schedule from their start (all of them start
		// within S of each other, as `mixmta mixnet run` does). It is
		// valid through the next epoch too, so it serves even when the
		// start was late in an epoch.
		a.advance(ctx, a.bootEpoch, since, s, s+s/4, 2*s, a.bootAt)
	}
}

// bootSettle is how long after its start an authority waits for uploads
// and probes before its bootstrap vote.
func bootSettle(epoch time.Duration) time.Duration { return min(epoch/8, 15*time.Second) }

// advance runs the round for target: at off >= voteAt the vote (of nodes
// reached since `since`), from tallyFrom the fetching of the other votes
// and the tally (when all are in, at tallyBy at the latest), then the
// exchange of signatures.
func (a *Server) advance(ctx context.Context, target uint64, off, voteAt, tallyFrom, tallyBy time.Duration, since time.Time) {
	a.mu.Lock()
	r := a.rounds[target]
	if r == nil {
		r = &round{votes: map[string]*Vote{}}
		a.rounds[target] = r
		for x := range a.rounds {
			if x+2 < target {
				delete(a.rounds, x)
			}
		}
	}
	hasVote, hasTally, failed := r.vote != nil, r.tally != nil, r.failed
	a.mu.Unlock()
	switch {
	case off < voteAt:
		return
	case !hasVote:
		a.makeVote(target, since, r)
		return
	case off < tallyFrom:
		return
	case !hasTally && !failed:
		a.fetchVotes(ctx, target, r)
		a.mu.Lock()
		all := len(r.votes) == len(a.cfg.Authorities)
		a.mu.Unlock()
		if all || off >= tallyBy {
			a.doTally(target, r)
		}
		return
	case hasTally:
		a.fetchSignatures(ctx, target, r)
		a.compareConsensus(ctx, target, r)
	}
}

// makeVote freezes this authority's vote for target: the descriptors of
// nodes reached since `since` that carry a mix key for target.
func (a *Server) makeVote(target uint64, since time.Time, r *round) {
	targetStart := nodes.EpochStart(target, a.cfg.Epoch)
	a.mu.Lock()
	v := &Vote{Version: Version, Epoch: target, Params: a.cfg.Params, Nodes: []*nodes.Descriptor{}}
	for id, n := range a.received {
		if a.reached[id].Before(since) {
			continue
		}
		hasKey := false
		for _, k := range n.Keys {
			hasKey = hasKey || k.Epoch == target
		}
		if hasKey && targetStart.Before(n.Keys[len(n.Keys)-1].NotAfter) {
			v.Nodes = append(v.Nodes, utcDescriptor(n.Descriptor))
		}
	}
	a.mu.Unlock()
	slices.SortFunc(v.Nodes, func(x, y *nodes.Descriptor) int { return cmp.Compare(x.ID, y.ID) })
	if err := v.Sign(a.cfg.Key); err != nil {
		a.cfg.Log.Error("[DIRECTORY] cannot sign vote", "epoch", target, "error", err)
		return
	}
	a.mu.Lock()
	r.vote = v
	r.votes[v.Authority] = v
	a.mu.Unlock()
	a.cfg.Log.Info("[DIRECTORY] vote signed", "epoch", target, "nodes", len(v.Nodes))
}

func (a *Server) fetchVotes(ctx context.Context, target uint64, r *round) {
	for _, p := range a.peers {
		key := b64(p.Identity)
		a.mu.Lock()
		have := r.votes[key] != nil || r.refused[key]
		a.mu.Unlock()
		if have {
			continue
		}
		var v Vote
		if err := a.get(ctx, p, "/v1/vote/"+strconv.FormatUint(target, 10), &v); err != nil {
			a.cfg.Log.Debug("[DIRECTORY] no vote yet", "authority", p.Name, "epoch", target, "error", err)
			continue
		}
		if err := VerifyVote(&v, p, target); err != nil {
			a.cfg.Log.Warn("[DIRECTORY] vote refused", "authority", p.Name, "epoch", target, "error", err)
			continue
		}
		// A vote's descriptors must verify as uploads do: an authority
		// cannot slip a forged one into the tally.
		// It signed what it sent: a bad vote is refused for the round,
		// not fetched and verified again at every step.
		ok := len(v.Nodes) <= MaxNodes
		if !ok {
			a.cfg.Log.Warn("[DIRECTORY] vote refused: too many nodes", "authority", p.Name, "epoch", target, "nodes", len(v.Nodes))
		}
		for _, d := range v.Nodes {
			if !ok {
				break
			}
			// The voter checked the publication time against its clock;
			// ours may be a little behind.
			at := time.Now()
			if d.Published.After(at) {
				at = d.Published
			}
			if _, err := nodes.VerifyNode(d, at); err != nil {
				a.cfg.Log.Warn("[DIRECTORY] vote refused: bad descriptor", "authority", p.Name, "epoch", target, "error", err)
				ok = false
				break
			}
		}
		a.mu.Lock()
		if ok {
			r.votes[key] = &v
		} else {
			if r.refused == nil {
				r.refused = map[string]bool{}
			}
			r.refused[key] = true
		}
		a.mu.Unlock()
	}
}

func (a *Server) doTally(target uint64, r *round) {
	a.mu.Lock()
	votes := make([]*Vote, 0, len(r.votes))
	for _, v := range r.votes {
		votes = append(votes, v)
	}
	a.mu.Unlock()
	c, err := Tally(target, len(a.cfg.Authorities), votes)
	if err != nil {
		a.cfg.Log.Error("[DIRECTORY] no consensus this epoch", "epoch", target, "error", err)
		a.mu.Lock()
		r.failed = true
		a.mu.Unlock()
		return
	}
	dg, err := c.Digest()
	if err == nil {
		err = c.Sign(a.cfg.Key)
	}
	if err != nil {
		a.cfg.Log.Error("[DIRECTORY] cannot sign the tally", "epoch", target, "error", err)
		return
	}
	a.mu.Lock()
	r.tally, r.digest, r.sig = c, dg, SignatureBy(a.cfg.Key, target, dg)
	a.mu.Unlock()
	a.cfg.Log.Info("[DIRECTORY] votes tallied", "epoch", target, "votes", len(votes), "nodes", len(c.Nodes), "digest", hex.EncodeToString(dg[:8]))
}

func (a *Server) fetchSignatures(ctx context.Context, target uint64, r *round) {
	for _, p := range a.peers {
		key := b64(p.Identity)
		a.mu.Lock()
		have := false
		for _, s := range r.tally.Signatures {
			have = have || s.Authority == key
		}
		dg := r.digest
		a.mu.Unlock()
		if have {
			continue
		}
		var s SignatureMsg
		if err := a.get(ctx, p, "/v1/signature/"+strconv.FormatUint(target, 10), &s); err != nil {
			continue
		}
		if !s.Verify(p.Identity, dg) {
			// Another tally (it saw other votes): its signature is not
			// for our document.
			a.cfg.Log.Debug("[DIRECTORY] authority signed another document", "authority", p.Name, "epoch", target)
			continue
		}
		a.mu.Lock()
		r.tally.Signatures = append(r.tally.Signatures, Signature{Authority: s.Authority, Signature: s.Signature})
		a.mu.Unlock()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := len(r.tally.Signatures); n >= Majority(len(a.cfg.Authorities)) && !r.published {
		r.published = true
		a.cfg.Log.Info("[DIRECTORY] consensus published", "epoch", target, "signatures", n, "nodes", len(r.tally.Nodes))
	}
}

// compareConsensus fetches, once the consensus is published, each peer's
// published consensus of target once. A different one also signed by a
// majority means an authority signed two tallies (it gave its vote to one
// peer and not the other, or different votes): this authority then
// serves, without signing it, the one with the smaller digest, which is
// also the one every node keeps (Client.Accept), so that nodes reaching
// different authorities get the same document.
func (a *Server) compareConsensus(ctx context.Context, target uint64, r *round) {
	a.mu.Lock()
	published := r.published
	a.mu.Unlock()
	if !published {
		return
	}
	for _, p := range a.peers {
		key := b64(p.Identity)
		a.mu.Lock()
		done := r.compared[key]
		a.mu.Unlock()
		if done {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, max(5*time.Second, a.cfg.Epoch/16))
		b, err := getBody(gctx, a.cfg.Client, p.Address, "/v1/consensus/"+strconv.FormatUint(target, 10))
		cancel()
		if err != nil {
			continue // not published there (yet)
		}
		a.mu.Lock()
		if r.compared == nil {
			r.compared = map[string]bool{}
		}
		r.compared[key] = true
		a.mu.Unlock()
		v, err := VerifyConsensus(b, a.cfg.Authorities, target, time.Now())
		if err != nil || v.Epoch != target {
			continue
		}
		dg, err := v.Digest()
		if err != nil {
			continue
		}
		a.mu.Lock()
		if dg != r.digest {
			a.cfg.Log.Error("[DIRECTORY] a peer publishes another consensus for this epoch, also signed by a majority: an authority signed both; the one with the smaller digest is served",
				"authority", p.Name, "epoch", target, "signers", strings.Join(v.Signers, ","), "digests", fmt.Sprintf("%x %x", r.digest[:8], dg[:8]))
			if bytes.Compare(dg[:], r.digest[:]) < 0 {
				r.tally, r.digest = v.Consensus, dg
			}
		}
		a.mu.Unlock()
	}
}

// probeLoop probes every node with a descriptor each ProbeInterval.
func (a *Server) probeLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ProbeInterval)
	defer t.Stop()
	for {
		a.mu.Lock()
		ns := make([]*nodes.Node, 0, len(a.received))
		for _, n := range a.received {
			ns = append(ns, n)
		}
		a.mu.Unlock()
		for _, n := range ns {
			go a.probe(ctx, n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Server) probe(ctx context.Context, n *nodes.Node) {
	if a.cfg.Probe == nil {
		return
	}
	a.mu.Lock()
	busy := a.probing[n.ID]
	a.probing[n.ID] = true
	a.mu.Unlock()
	if busy {
		return
	}
	defer func() {
		a.mu.Lock()
		delete(a.probing, n.ID)
		a.mu.Unlock()
	}()
	pctx, cancel := context.WithTimeout(ctx, max(a.cfg.ProbeInterval, 10*time.Second))
	defer cancel()
	if err := a.cfg.Probe(pctx, n); err != nil {
		a.cfg.Log.Debug("[DIRECTORY] node not reached", "node", n.ID.Short(), "error", err)
		a.mu.Lock()
		a.failed[n.ID] = time.Now()
		a.mu.Unlock()
		return
	}
	a.mu.Lock()
	a.reached[n.ID] = time.Now()
	a.mu.Unlock()
}

// get fetches path from authority p and decodes its JSON into v.
// A request is bounded by a sixteenth of the epoch (at least 5 s): the
// steps run one after the other, and an authority that is down must not
// make the others miss their phase deadlines.
func (a *Server) get(ctx context.Context, p Authority, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, max(5*time.Second, a.cfg.Epoch/16))
	defer cancel()
	return getJSON(ctx, a.cfg.Client, p.Address, path, v)
}

func getJSON(ctx context.Context, c *http.Client, addr, path string, v any) error {
	b, err := getBody(ctx, c, addr, path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func getBody(ctx context.Context, c *http.Client, addr, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// ServeHTTP implements the directory protocol (see the package comment).
func (a *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/descriptor":
		a.upload(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/"):
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
		if len(parts) != 2 {
			http.NotFound(w, r)
			return
		}
		e, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			http.Error(w, "bad epoch", http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		var v any
		if rd := a.rounds[e]; rd != nil {
			switch parts[0] {
			case "vote":
				if rd.vote != nil {
					v = rd.vote
				}
			case "signature":
				if rd.tally != nil {
					v = rd.sig
				}
			case "consensus":
				if rd.published {
					v = rd.tally
				}
			}
		}
		var b []byte
		if v != nil {
			b, err = json.Marshal(v)
		}
		a.mu.Unlock()
		if v == nil || err != nil {
			http.Error(w, fmt.Sprintf("no %s for epoch %d here", parts[0], e), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

func (a *Server) upload(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxDescriptor))
	if err != nil {
		http.Error(w, "descriptor too large", http.StatusRequestEntityTooLarge)
		return
	}
	d, err := nodes.ParseDescriptor(b)
	var n *nodes.Node
	if err == nil {
		n, err = nodes.VerifyNode(d, time.Now())
	}
	if err == nil {
		err = a.cfg.Params.checkFormat(n)
	}
	if err != nil {
		a.cfg.Log.Info("[DIRECTORY] descriptor refused", "error", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	old := a.received[n.ID]
	grow := len(b) - a.held[n.ID]
	for old == nil && len(a.received) >= a.maxNodes || a.heldBytes+grow > a.maxBytes {
		if !a.evictOne(time.Now(), n.ID) {
			a.mu.Unlock()
			http.Error(w, "directory full", http.StatusServiceUnavailable)
			return
		}
	}
	fresh := old == nil || n.Published.After(old.Published)
	if fresh {
		a.received[n.ID] = n
		a.held[n.ID] = len(b)
		a.heldBytes += grow
	}
	a.mu.Unlock()
	if fresh {
		go a.probe(context.Background(), n)
	}
	w.WriteHeader(http.StatusNoContent)
}

// evictOne drops one node that cannot be in a vote, to make room for a
// new upload: one whose keys have all expired, or whose last probe failed
// and that was not reached during the last epoch (never reached: a node
// that does not exist, as a flood of fresh keys makes them). A node not
// probed yet since its upload is kept: it has had no chance, and so is
// keep (the node uploading). Call with mu held; false if none can go.
func (a *Server) evictOne(now time.Time, keep sdk.NodeID) bool {
	for id, n := range a.received {
		if id == keep {
			continue
		}
		expired := !now.Before(n.Keys[len(n.Keys)-1].NotAfter)
		unreached := a.failed[id].After(a.reached[id]) && now.Sub(a.reached[id]) > a.cfg.Epoch
		if expired || unreached {
			delete(a.received, id)
			a.heldBytes -= a.held[id]
			delete(a.held, id)
			delete(a.reached, id)
			delete(a.failed, id)
			return true
		}
	}
	return false
}

// Serve answers the directory protocol on ln until ctx ends.
func (a *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
