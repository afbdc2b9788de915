package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk"
)

// ClientConfig configures a node's side of the directory.
type ClientConfig struct {
	// Authorities of the network.
	Authorities []Authority
	// Epoch is the epoch length (whole seconds).
	Epoch time.Duration
	// Descriptor returns this node's current signed descriptor.
	Descriptor func(now time.Time) (*nodes.Descriptor, error)
	// CheckParams refuses a consensus whose network parameters this node
	// cannot work with (another packet size, epoch or packet format).
	CheckParams func(Params) error
	// StateFile keeps the consensus in use across restarts (written 0600),
	// so a restarted node routes at once and refuses older documents.
	StateFile string
	// Client talks to the authorities (dialing through Tor when Tor is
	// configured).
	Client *http.Client
	Log    hclog.Logger
}

// Client uploads this node's descriptor to every authority each epoch and
// keeps the consensus in use: the newest one a majority of the
// authorities signed, from its epoch's start until it expires.
type Client struct {
	cfg ClientConfig

	mu       sync.Mutex
	cur      *Verified
	next     *Verified
	minEpoch uint64
	expired  bool
	uploaded map[string]uint64 // authority address -> epoch of the last upload
	busy     map[string]bool   // upload or fetch in flight
	empty    *nodes.Directory
}

// NewClient returns a Client with the consensus of cfg.StateFile when it
// is still valid (its epoch is remembered either way: nothing older is
// accepted later).
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Authorities) == 0 {
		return nil, errors.New("directory: no authorities configured")
	}
	if err := CheckAuthorities(cfg.Authorities); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	empty, _ := nodes.NewDirectory()
	c := &Client{cfg: cfg, uploaded: map[string]uint64{}, busy: map[string]bool{}, empty: empty}
	if cfg.StateFile == "" {
		return c, nil
	}
	data, err := os.ReadFile(cfg.StateFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("directory: %w", err)
	}
	var head struct {
		Epoch uint64 `json:"epoch"`
	}
	if json.Unmarshal(data, &head) == nil {
		c.minEpoch = head.Epoch
		if head.Epoch > 0 && time.Now().Before(nodes.EpochStart(head.Epoch, cfg.Epoch)) {
			// A next consensus, stored before its epoch: the current
			// epoch's is no rollback.
			c.minEpoch = head.Epoch - 1
		}
	}
	v, err := VerifyConsensus(data, cfg.Authorities, 0, time.Now())
	if err != nil {
		cfg.Log.Warn("[DIRECTORY] stored consensus not usable; waiting for a new one", "error", err)
		return c, nil
	}
	c.install(v, time.Now(), false)
	return c, nil
}

// Current returns the consensus in use, nil if none (none fetched yet, or
// the last one expired).
func (c *Client) Current() *Verified {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance(time.Now())
	return c.cur
}

// Directory returns the nodes of the consensus in use; an empty directory
// when there is none, so that mail is held rather than routed on a stale
// view.
func (c *Client) Directory() *nodes.Directory {
	if v := c.Current(); v != nil {
		return v.Directory
	}
	return c.empty
}

// advance promotes the next consensus at its epoch and drops an expired
// one. Call with mu held.
func (c *Client) advance(now time.Time) {
	if c.next != nil && !now.Before(c.next.ValidAfter) {
		c.cur, c.next = c.next, nil
		c.expired = false
		c.minEpoch = max(c.minEpoch, c.cur.Epoch)
		c.cfg.Log.Info("[DIRECTORY] consensus in use", "epoch", c.cur.Epoch, "signers", len(c.cur.Signers), "nodes", c.cur.Directory.Len())
	}
	if c.cur != nil && !now.Before(c.cur.ValidUntil) {
		c.cfg.Log.Error("[DIRECTORY] consensus expired and no newer one is signed by a majority of the authorities; mail is held", "epoch", c.cur.Epoch)
		c.cur, c.expired = nil, true
	}
}

// install takes v as the current or next consensus and, if save, stores
// it.
func (c *Client) install(v *Verified, now time.Time, save bool) {
	c.mu.Lock()
	// Only the consensus in use sets the oldest epoch accepted: a next
	// one, fetched before its epoch, must not make the current epoch's a
	// rollback (a node that starts late in an epoch fetches both, and
	// would hold its mail until the next epoch began).
	if now.Before(v.ValidAfter) {
		c.next = v
	} else if c.cur == nil || v.Epoch >= c.cur.Epoch {
		c.cur = v
		c.expired = false
		c.minEpoch = max(c.minEpoch, v.Epoch)
		c.cfg.Log.Info("[DIRECTORY] consensus in use", "epoch", v.Epoch, "signers", len(v.Signers), "nodes", v.Directory.Len())
	}
	c.mu.Unlock()
	if save && c.cfg.StateFile != "" {
		b, err := json.Marshal(v.Consensus)
		if err == nil {
			err = writeFile(c.cfg.StateFile, b)
		}
		if err != nil {
			c.cfg.Log.Error("[DIRECTORY] cannot store the consensus", "error", err)
		}
	}
}

// Run uploads and fetches on the epoch schedule until ctx ends.
func (c *Client) Run(ctx context.Context) {
	onTicks(ctx, c.cfg.Epoch, func(now time.Time) { c.step(ctx, now) })
}

func (c *Client) step(ctx context.Context, now time.Time) {
	p := c.cfg.Epoch
	e := nodes.Epoch(now, p)
	off := now.Sub(nodes.EpochStart(e, p))
	c.mu.Lock()
	c.advance(now)
	var want []uint64
	if c.cur == nil || c.cur.Epoch < e {
		want = append(want, e)
	}
	if c.cur == nil && e > 0 {
		// The previous epoch's consensus is valid through this one (a
		// network's bootstrap consensus may be of the epoch before).
		want = append(want, e-1)
	}
	if off >= 7*p/8 && c.next == nil {
		want = append(want, e+1)
	}
	var uploads []Authority
	for _, a := range c.cfg.Authorities {
		if c.uploaded[a.Address] != e+1 && !c.busy["up "+a.Address] {
			c.busy["up "+a.Address] = true
			uploads = append(uploads, a)
		}
	}
	var fetches []uint64
	for _, w := range want {
		k := "get " + strconv.FormatUint(w, 10)
		if !c.busy[k] {
			c.busy[k] = true
			fetches = append(fetches, w)
		}
	}
	c.mu.Unlock()
	if len(uploads) > 0 {
		d, err := c.cfg.Descriptor(now)
		if err != nil {
			c.cfg.Log.Error("[DIRECTORY] cannot make this node's descriptor", "error", err)
		}
		for _, a := range uploads {
			go func() {
				if d != nil {
					c.upload(ctx, a, d, e+1)
				}
				c.mu.Lock()
				delete(c.busy, "up "+a.Address)
				c.mu.Unlock()
			}()
		}
	}
	for _, w := range fetches {
		go func() {
			c.fetch(ctx, w)
			c.mu.Lock()
			delete(c.busy, "get "+strconv.FormatUint(w, 10))
			c.mu.Unlock()
		}()
	}
}

func (c *Client) upload(ctx context.Context, a Authority, d *nodes.Descriptor, target uint64) {
	b, err := json.Marshal(d)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Address+"/v1/descriptor", bytes.NewReader(b))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		c.cfg.Log.Debug("[DIRECTORY] descriptor upload failed", "authority", a.Name, "error", err)
		return
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		c.cfg.Log.Warn("[DIRECTORY] descriptor refused by authority", "authority", a.Name, "status", resp.Status, "error", string(bytes.TrimSpace(msg)))
		return
	}
	c.mu.Lock()
	c.uploaded[a.Address] = target
	c.mu.Unlock()
	c.cfg.Log.Debug("[DIRECTORY] descriptor uploaded", "authority", a.Name)
}

// fetch gets the consensus of epoch e from every authority, in random
// order: a malicious authority that signed two tallies for one epoch makes
// two documents each signed by a majority, and a node that stopped at the
// first one that verifies would use one or the other at random (Accept
// keeps one of them, the same at every node).
func (c *Client) fetch(ctx context.Context, e uint64) {
	order := rand.Perm(len(c.cfg.Authorities))
	for _, i := range order {
		a := c.cfg.Authorities[i]
		b, err := getBody(ctx, c.cfg.Client, a.Address, "/v1/consensus/"+strconv.FormatUint(e, 10))
		if err != nil {
			c.cfg.Log.Debug("[DIRECTORY] no consensus from authority", "authority", a.Name, "epoch", e, "error", err)
			continue
		}
		if err := c.Accept(b, time.Now()); err != nil {
			c.cfg.Log.Error("[DIRECTORY] consensus refused", "authority", a.Name, "error", err)
		}
	}
}

// Accept verifies a consensus document (see VerifyConsensus; nothing older
// than the consensus in use, and network parameters CheckParams accepts)
// and, if it is valid, takes it into use at its epoch and stores it.
func (c *Client) Accept(data []byte, now time.Time) error {
	c.mu.Lock()
	minEpoch := c.minEpoch
	c.mu.Unlock()
	// The same document from another authority (fetch asks them all)
	// need not be verified again.
	var peek Consensus
	if json.Unmarshal(data, &peek) == nil && !slices.Contains(peek.Nodes, nil) && peek.Params.epochOK() {
		if dg, err := peek.Digest(); err == nil && c.holds(peek.Epoch, dg) {
			return nil
		}
	}
	v, err := VerifyConsensus(data, c.cfg.Authorities, minEpoch, now)
	if err != nil {
		return err
	}
	if c.cfg.CheckParams != nil {
		if err := c.cfg.CheckParams(v.Params); err != nil {
			return fmt.Errorf("directory: consensus of epoch %d refused: %w", v.Epoch, err)
		}
	}
	if !c.preferred(v) {
		return nil
	}
	c.install(v, now, true)
	return nil
}

// holds reports whether the consensus of epoch e in use or next has
// digest dg.
func (c *Client) holds(e uint64, dg [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range []*Verified{c.cur, c.next} {
		if h != nil && h.Epoch == e {
			if hd, err := h.Digest(); err == nil && hd == dg {
				return true
			}
		}
	}
	return false
}

// preferred reports whether v is to be installed: no document of its
// epoch is held, or one with a greater digest. Two documents of one epoch,
// each signed by a majority, mean that an authority signed both (with
// three authorities, one malicious one suffices): every node keeps the one
// with the smaller digest, so that they all use the same, and the
// authorities that signed both are named.
func (c *Client) preferred(v *Verified) bool {
	c.mu.Lock()
	var held *Verified
	for _, h := range []*Verified{c.cur, c.next} {
		if h != nil && h.Epoch == v.Epoch {
			held = h
		}
	}
	c.mu.Unlock()
	if held == nil {
		return true
	}
	dv, _ := v.Digest()
	dh, _ := held.Digest()
	if dv == dh {
		return false
	}
	var both []string
	for _, s := range v.Signers {
		if slices.Contains(held.Signers, s) {
			both = append(both, s)
		}
	}
	c.cfg.Log.Error("[DIRECTORY] two consensus documents for one epoch, each signed by a majority: the authorities that signed both equivocate; the one with the smaller digest is used",
		"epoch", v.Epoch, "signed_both", strings.Join(both, ","), "digests", fmt.Sprintf("%x %x", dh[:8], dv[:8]))
	return bytes.Compare(dv[:], dh[:]) < 0
}

// Lookup finds the node with id in the consensus in use.
func (c *Client) Lookup(id sdk.NodeID) (*nodes.Node, bool) { return c.Directory().Lookup(id) }

func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-consensus-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
