package directory

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// Version is the only vote and consensus version this package writes and
// accepts.
const Version = 1

// Errors a consensus or vote is refused with; errors.Is finds them in the
// detailed error.
var (
	// ErrMalformed: the document does not decode or has bad fields.
	ErrMalformed = errors.New("malformed document")
	// ErrMinority: fewer than a majority of the configured authorities
	// signed this very document (signatures over another document, a
	// mixed one, count as not signed).
	ErrMinority = errors.New("not signed by a majority of the authorities")
	// ErrRollback: the document is of an older epoch than one already
	// in use (a replayed consensus).
	ErrRollback = errors.New("older than the consensus in use")
	// ErrExpired: the document's validity has ended.
	ErrExpired = errors.New("consensus expired")
	// ErrBadDescriptor: a descriptor in the document is forged, malformed
	// or inconsistent (see nodes.Verify).
	ErrBadDescriptor = errors.New("bad descriptor in the document")
	// ErrNoMajority: the votes do not agree enough for a consensus.
	ErrNoMajority = errors.New("votes have no majority")
)

// Authority is a configured directory authority: its 32-byte Ed25519 key
// and where its directory listener is (host:port, an onion address in
// production).
type Authority struct {
	Name     string
	Identity ed25519.PublicKey
	Address  string
}

// Majority is the number of signatures a consensus of n authorities needs:
// more than half.
func Majority(n int) int { return n/2 + 1 }

// Params are the network parameters every node of the network must share.
type Params struct {
	// EpochSeconds is the epoch length (mix key lifetime), seconds.
	EpochSeconds int64 `json:"epoch_seconds"`
	// PacketSize is the Sphinx packet size, bytes.
	PacketSize int `json:"packet_size"`
	// SphinxFormat names the Sphinx packet format of the network ("" is
	// the default X25519 format).
	SphinxFormat string `json:"sphinx_format,omitempty"`
	// SendRate (λ_P), DropRate and LoopRate are Poisson rates, packets
	// per second (Loopix §4).
	SendRate float64 `json:"send_rate"`
	DropRate float64 `json:"drop_rate"`
	LoopRate float64 `json:"loop_rate"`
}

// maxEpochSeconds bounds Params.EpochSeconds: its time.Duration must not
// overflow (about 68 years).
const maxEpochSeconds = 1<<31 - 1

// epochOK reports whether EpochSeconds is a usable epoch length: 1 s to
// maxEpochSeconds (a larger one wraps around as a time.Duration).
func (p Params) epochOK() bool { return p.EpochSeconds >= 1 && p.EpochSeconds <= maxEpochSeconds }

// Vote is one authority's view of the network for an epoch.
type Vote struct {
	Version   int                 `json:"version"`
	Epoch     uint64              `json:"epoch"`
	Authority string              `json:"authority"`
	Params    Params              `json:"params"`
	Nodes     []*nodes.Descriptor `json:"nodes"`
	Signature string              `json:"signature,omitempty"`
}

// Signature is one authority's signature over a consensus digest.
type Signature struct {
	Authority string `json:"authority"`
	Signature string `json:"signature"`
}

// Consensus is the directory of one epoch: the nodes a majority of the
// authorities voted for, with their descriptors, and the network
// parameters, valid in [ValidAfter, ValidUntil).
type Consensus struct {
	Version int    `json:"version"`
	Epoch   uint64 `json:"epoch"`
	// ValidAfter is the start of Epoch; ValidUntil the end of the epoch
	// after it: a node keeps routing for one epoch when no newer
	// consensus comes.
	ValidAfter time.Time           `json:"valid_after"`
	ValidUntil time.Time           `json:"valid_until"`
	Params     Params              `json:"params"`
	Nodes      []*nodes.Descriptor `json:"nodes"`
	Signatures []Signature         `json:"signatures,omitempty"`
}

// SignatureMsg is what GET /v1/signature/E returns: an authority's
// signature over the digest of its tally.
type SignatureMsg struct {
	Epoch     uint64 `json:"epoch"`
	Digest    string `json:"digest"`
	Authority string `json:"authority"`
	Signature string `json:"signature"`
}

const (
	voteContext      = "mixmta directory vote v1"
	consensusContext = "mixmta directory consensus v1"
)

// utcDescriptor is a copy of d with its times in UTC, so that the JSON of
// one descriptor is the same at every authority (its signature covers unix
// seconds, not the zone).
func utcDescriptor(d *nodes.Descriptor) *nodes.Descriptor {
	if d == nil {
		return nil // refused by the verifiers; never a panic
	}
	c := *d
	c.Published = c.Published.UTC()
	c.MixKeys = slices.Clone(d.MixKeys)
	for i := range c.MixKeys {
		c.MixKeys[i].NotBefore = c.MixKeys[i].NotBefore.UTC()
		c.MixKeys[i].NotAfter = c.MixKeys[i].NotAfter.UTC()
	}
	c.Capabilities = slices.Clone(d.Capabilities)
	return &c
}

func digestJSON(v any) ([32]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

func signed(ctx string, digest [32]byte) []byte {
	return append(append([]byte(ctx), 0), digest[:]...)
}

// Digest is the SHA-256 of the consensus' canonical JSON (without its
// signatures).
func (c *Consensus) Digest() ([32]byte, error) {
	u := *c
	u.Signatures = nil
	u.ValidAfter, u.ValidUntil = u.ValidAfter.UTC(), u.ValidUntil.UTC()
	u.Nodes = make([]*nodes.Descriptor, len(c.Nodes))
	for i, d := range c.Nodes {
		u.Nodes[i] = utcDescriptor(d)
	}
	return digestJSON(&u)
}

// Sign adds key's signature (replacing an earlier one by the same key).
func (c *Consensus) Sign(key ed25519.PrivateKey) error {
	dg, err := c.Digest()
	if err != nil {
		return err
	}
	pub := b64(key.Public().(ed25519.PublicKey))
	c.Signatures = slices.DeleteFunc(c.Signatures, func(s Signature) bool { return s.Authority == pub })
	c.Signatures = append(c.Signatures, Signature{Authority: pub, Signature: b64(ed25519.Sign(key, signed(consensusContext, dg)))})
	slices.SortFunc(c.Signatures, func(a, b Signature) int { return cmp.Compare(a.Authority, b.Authority) })
	return nil
}

// SignatureBy returns key's signature over digest, as an authority
// publishes it.
func SignatureBy(key ed25519.PrivateKey, epoch uint64, digest [32]byte) SignatureMsg {
	return SignatureMsg{Epoch: epoch, Digest: hex.EncodeToString(digest[:]), Authority: b64(key.Public().(ed25519.PublicKey)),
		Signature: b64(ed25519.Sign(key, signed(consensusContext, digest)))}
}

// Verify checks that s is a valid signature by pub over digest.
func (s SignatureMsg) Verify(pub ed25519.PublicKey, digest [32]byte) bool {
	sig, err := unb64(s.Signature, ed25519.SignatureSize)
	return err == nil && s.Authority == b64(pub) && ed25519.Verify(pub, signed(consensusContext, digest), sig)
}

// Digest is the SHA-256 of the vote's canonical JSON (without its
// signature).
func (v *Vote) Digest() ([32]byte, error) {
	u := *v
	u.Signature = ""
	u.Nodes = make([]*nodes.Descriptor, len(v.Nodes))
	for i, d := range v.Nodes {
		u.Nodes[i] = utcDescriptor(d)
	}
	return digestJSON(&u)
}

// Sign sets the vote's Authority and Signature.
func (v *Vote) Sign(key ed25519.PrivateKey) error {
	v.Authority = b64(key.Public().(ed25519.PublicKey))
	dg, err := v.Digest()
	if err != nil {
		return err
	}
	v.Signature = b64(ed25519.Sign(key, signed(voteContext, dg)))
	return nil
}

// VerifyVote checks that v is a vote for epoch signed by auth.
func VerifyVote(v *Vote, auth Authority, epoch uint64) error {
	if v.Version != Version || v.Epoch != epoch {
		return fmt.Errorf("directory: vote of %s: %w: version %d epoch %d, want version %d epoch %d", auth.Name, ErrMalformed, v.Version, v.Epoch, Version, epoch)
	}
	if slices.Contains(v.Nodes, nil) {
		return fmt.Errorf("directory: vote of %s: %w: a null node", auth.Name, ErrMalformed)
	}
	if v.Authority != b64(auth.Identity) {
		return fmt.Errorf("directory: vote of %s: %w: signed as %s", auth.Name, ErrMalformed, v.Authority)
	}
	sig, err := unb64(v.Signature, ed25519.SignatureSize)
	if err != nil {
		return fmt.Errorf("directory: vote of %s: %w: signature: %v", auth.Name, ErrMalformed, err)
	}
	dg, err := v.Digest()
	if err != nil || !ed25519.Verify(auth.Identity, signed(voteContext, dg), sig) {
		return fmt.Errorf("directory: vote of %s: signature does not verify: %w", auth.Name, ErrMinority)
	}
	return nil
}

// Window returns the validity of the consensus of epoch e: from the start
// of e to the end of e+1.
func Window(e uint64, epoch time.Duration) (validAfter, validUntil time.Time) {
	return nodes.EpochStart(e, epoch), nodes.EpochStart(e+2, epoch)
}

// Tally makes the consensus of epoch from the votes of the authorities
// (at most one per authority, already verified): the parameters a majority
// of all n configured authorities voted for, and every node a majority
// voted for, with the most recently published of the descriptors voted
// for it (ties: the smallest digest). Nodes are sorted by id. Names are
// labels, not identities: nodes sharing a name all stay (keeping one would
// let any node evict another by taking its name). Error:
// ErrNoMajority when fewer than a majority of votes came or they agree on
// no parameters. Every authority that tallies the same votes makes the
// same document.
func Tally(epoch uint64, n int, votes []*Vote) (*Consensus, error) {
	need := Majority(n)
	if len(votes) < need {
		return nil, fmt.Errorf("directory: epoch %d: %d of %d votes, need %d: %w", epoch, len(votes), n, need, ErrNoMajority)
	}
	paramVotes := map[Params]int{}
	var params *Params
	for _, v := range votes {
		if !v.Params.epochOK() {
			continue
		}
		paramVotes[v.Params]++
		if paramVotes[v.Params] >= need {
			p := v.Params
			params = &p
		}
	}
	if params == nil {
		return nil, fmt.Errorf("directory: epoch %d: no network parameters have %d of %d votes: %w", epoch, need, n, ErrNoMajority)
	}
	type cand struct {
		d      *nodes.Descriptor
		digest [32]byte
	}
	byID := map[string][]cand{}
	for _, v := range votes {
		seen := map[string]bool{}
		for _, d := range v.Nodes {
			if d == nil || seen[d.ID] {
				continue
			}
			seen[d.ID] = true
			u := utcDescriptor(d)
			dg, err := digestJSON(u)
			if err != nil {
				return nil, err
			}
			byID[d.ID] = append(byID[d.ID], cand{u, dg})
		}
	}
	var out []*nodes.Descriptor
	for _, cs := range byID {
		if len(cs) < need {
			continue
		}
		best := slices.MinFunc(cs, func(a, b cand) int {
			if c := b.d.Published.Compare(a.d.Published); c != 0 {
				return c
			}
			return bytes.Compare(a.digest[:], b.digest[:])
		})
		out = append(out, best.d)
	}
	slices.SortFunc(out, func(a, b *nodes.Descriptor) int { return cmp.Compare(a.ID, b.ID) })
	if out == nil {
		out = []*nodes.Descriptor{}
	}
	va, vu := Window(epoch, time.Duration(params.EpochSeconds)*time.Second)
	return &Consensus{Version: Version, Epoch: epoch, ValidAfter: va.UTC(), ValidUntil: vu.UTC(), Params: *params, Nodes: out}, nil
}

// Verified is a consensus that passed VerifyConsensus.
type Verified struct {
	*Consensus
	// Signers are the names of the authorities whose signature verified.
	Signers []string
	// Directory holds the consensus' nodes that have a mix key valid at
	// the time of verification or later.
	Directory *nodes.Directory
}

// VerifyConsensus decodes and checks a consensus document at now against
// the configured authorities: version and validity window consistent with
// its epoch and parameters, not older than minEpoch (ErrRollback), not
// expired (ErrExpired), signed by a majority of auths over this exact
// content (ErrMinority; signatures by unknown keys are ignored), and every
// descriptor verifies (ErrBadDescriptor wrapping the nodes error kind).
// Descriptors whose keys have all expired are left out of the Directory.
func VerifyConsensus(data []byte, auths []Authority, minEpoch uint64, now time.Time) (*Verified, error) {
	var c Consensus
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("directory: consensus: %w: %v", ErrMalformed, err)
	}
	if c.Version != Version {
		return nil, fmt.Errorf("directory: consensus: %w: version %d, want %d", ErrMalformed, c.Version, Version)
	}
	if slices.Contains(c.Nodes, nil) {
		return nil, fmt.Errorf("directory: consensus of epoch %d: %w: a null node", c.Epoch, ErrMalformed)
	}
	if !c.Params.epochOK() {
		return nil, fmt.Errorf("directory: consensus of epoch %d: %w: epoch_seconds %d, want 1 to %d", c.Epoch, ErrMalformed, c.Params.EpochSeconds, int64(maxEpochSeconds))
	}
	if va, vu := Window(c.Epoch, time.Duration(c.Params.EpochSeconds)*time.Second); !va.Equal(c.ValidAfter) || !vu.Equal(c.ValidUntil) {
		return nil, fmt.Errorf("directory: consensus of epoch %d: %w: valid %s to %s, the epoch says %s to %s", c.Epoch, ErrMalformed,
			c.ValidAfter.Format(time.RFC3339), c.ValidUntil.Format(time.RFC3339), va.UTC().Format(time.RFC3339), vu.UTC().Format(time.RFC3339))
	}
	if c.Epoch < minEpoch {
		return nil, fmt.Errorf("directory: consensus of epoch %d refused: %w (epoch %d)", c.Epoch, ErrRollback, minEpoch)
	}
	if !now.Before(c.ValidUntil) {
		return nil, fmt.Errorf("directory: consensus of epoch %d: %w at %s", c.Epoch, ErrExpired, c.ValidUntil.Format(time.RFC3339))
	}
	dg, err := c.Digest()
	if err != nil {
		return nil, fmt.Errorf("directory: consensus: %w: %v", ErrMalformed, err)
	}
	msg := signed(consensusContext, dg)
	// One key listed twice (a pasted line) is one authority: its
	// signature counts once, and the majority is of distinct keys.
	auths = distinctAuthorities(auths)
	var signers []string
	bad := 0
	for _, a := range auths {
		pub := b64(a.Identity)
		for _, s := range c.Signatures {
			if s.Authority != pub {
				continue
			}
			sig, err := unb64(s.Signature, ed25519.SignatureSize)
			if err == nil && ed25519.Verify(a.Identity, msg, sig) {
				signers = append(signers, a.Name)
			} else {
				bad++
			}
			break
		}
	}
	if need := Majority(len(auths)); len(signers) < need {
		detail := ""
		if bad > 0 {
			detail = fmt.Sprintf("; %d signature(s) by configured authorities do not verify over this document (altered or mixed from other documents)", bad)
		}
		return nil, fmt.Errorf("directory: consensus of epoch %d refused: signed by %d of %d authorities %v, need %d%s: %w",
			c.Epoch, len(signers), len(auths), signers, need, detail, ErrMinority)
	}
	var live []*nodes.Node
	for i, d := range c.Nodes {
		// A majority of the authorities checked the publication time
		// against their clocks: a node whose clock is behind theirs (or
		// a node that published ahead on purpose) must not refuse the
		// whole document for it.
		at := now
		if d.Published.After(at) {
			at = d.Published
		}
		n, err := nodes.VerifyNode(d, at)
		switch {
		case errors.Is(err, nodes.ErrExpired):
			continue
		case err != nil:
			return nil, fmt.Errorf("directory: consensus of epoch %d refused: nodes[%d]: %w: %w", c.Epoch, i, ErrBadDescriptor, err)
		}
		if err := c.Params.checkFormat(n); err != nil {
			return nil, fmt.Errorf("directory: consensus of epoch %d refused: nodes[%d]: %w: %w", c.Epoch, i, ErrBadDescriptor, err)
		}
		live = append(live, n)
	}
	dir, err := nodes.NewConsensusDirectory(live...)
	if err != nil {
		return nil, fmt.Errorf("directory: consensus of epoch %d refused: %w: %w", c.Epoch, ErrBadDescriptor, err)
	}
	return &Verified{Consensus: &c, Signers: signers, Directory: dir}, nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func unb64(s string, n int) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b) != n {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), n)
	}
	return b, nil
}

// distinctAuthorities is auths without the later entries of a key listed
// more than once.
func distinctAuthorities(auths []Authority) []Authority {
	var out []Authority
	for _, a := range auths {
		if !slices.ContainsFunc(out, func(o Authority) bool { return o.Identity.Equal(a.Identity) }) {
			out = append(out, a)
		}
	}
	return out
}

// CheckAuthorities refuses a list of authorities with one key (or one
// name) given twice: a signature must count once among distinct
// authorities, or one authority makes a majority.
func CheckAuthorities(auths []Authority) error {
	for i, a := range auths {
		for _, o := range auths[:i] {
			if o.Identity.Equal(a.Identity) || o.Name == a.Name {
				return fmt.Errorf("directory: authorities %s and %s: key or name listed twice", o.Name, a.Name)
			}
		}
	}
	return nil
}

// ParseAuthorityKey decodes a base64 32-byte Ed25519 public key.
func ParseAuthorityKey(s string) (ed25519.PublicKey, error) {
	b, err := unb64(s, ed25519.PublicKeySize)
	if err != nil {
		return nil, fmt.Errorf("authority key: %v", err)
	}
	return ed25519.PublicKey(b), nil
}

// NodeID is the id of the node of descriptor d (its hex id decoded), or
// false if it is not 64 hex digits.
func NodeID(d *nodes.Descriptor) (sdk.NodeID, bool) {
	var id sdk.NodeID
	b, err := hex.DecodeString(d.ID)
	if err != nil || len(b) != len(id) {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// checkFormat refuses a node whose mix keys are not of the network's
// Sphinx packet format (SphinxFormat; "" is x25519): a consensus never
// mixes formats, and never carries nodes of a format other than the one
// its parameters name.
func (p Params) checkFormat(n *nodes.Node) error {
	want, err := mixkey.ParseKind(p.SphinxFormat)
	if err != nil {
		return err
	}
	if n.Format != want {
		return fmt.Errorf("node %s: %w: its mix keys are %s, the network's sphinx format is %s", n.ID.Short(), nodes.ErrWrongFormat, n.Format, want)
	}
	return nil
}
