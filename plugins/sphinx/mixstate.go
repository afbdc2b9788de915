package main

import (
	"bytes"
	"cmp"
	"crypto/hpke"
	"fmt"
	"slices"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// mixState is the core's sdk.MixState, checked and indexed once per
// SetMixState so that Route, Mix and Cover do no parsing.
type mixState struct {
	epoch uint64
	self  sdk.NodeID
	// selfExit: this node's own directory entry says exit or mail2news
	// (it delivers). Fragments are delivered only then.
	selfExit bool
	// selfKey is this node's own public key for the current epoch (the last
	// hop of its loops); nil when it has none.
	selfKey []byte
	// selfKEM is selfKey parsed (KEM format only).
	selfKEM hpke.PublicKey
	// keys are this node's own keys in the order Mix tries them
	// (keyOrder); their private halves are in the Stage's keyring.
	keys []ownKey
	// candidates are the nodes a path may use: healthy, not Self, with a
	// 32-byte public key for the current epoch; no id twice.
	candidates []candidate
}

// ownKey is one of this node's epoch keys.
type ownKey struct {
	epoch    uint64
	notAfter time.Time
}

// candidate is a node a path may use, with its key for the current epoch.
type candidate struct {
	id   sdk.NodeID
	exit bool
	// news: the node posts mail2news messages (capability mail2news).
	news bool
	key  []byte
	// kem is key parsed, for the KEM format (nil for X25519).
	kem hpke.PublicKey
}

// newMixState checks s and indexes it for packet format f. It fails (and
// the stage keeps its previous state) when Self is zero or one of this
// node's own keys is unusable: a public key that is not of f's algorithm
// (32-byte X25519, 1216-byte X-Wing: the core's mix.sphinx_format differs
// from this stage's sphinx_format), no NotAfter, or one epoch twice. (That the key file holds the private key of that public key is
// checked when the keyring loads it.) Directory entries are
// filtered, never an error: an unhealthy node, a node without a key of
// f's algorithm for the current epoch and a repeated node id are left out
// of paths (the core already refuses a nodes file of another format).
func newMixState(s sdk.MixState, f packetFormat) (*mixState, error) {
	if s.Self == (sdk.NodeID{}) {
		return nil, fmt.Errorf("Self is the zero node id")
	}
	st := &mixState{epoch: s.Epoch, self: s.Self}
	seen := map[uint64]bool{}
	for _, k := range s.Keys {
		if seen[k.Epoch] {
			return nil, fmt.Errorf("own key for epoch %d given twice", k.Epoch)
		}
		seen[k.Epoch] = true
		kem, err := f.parseKey(k.Public)
		if err != nil {
			return nil, fmt.Errorf("own key for epoch %d: %v (sphinx_format is %s: the core's mix.sphinx_format must be the same)", k.Epoch, err, f.kind)
		}
		if k.NotAfter.Unix() <= 0 {
			return nil, fmt.Errorf("own key for epoch %d has no NotAfter", k.Epoch)
		}
		st.keys = append(st.keys, ownKey{epoch: k.Epoch, notAfter: k.NotAfter})
		if k.Epoch == s.Epoch {
			st.selfKey, st.selfKEM = bytes.Clone(k.Public), kem
		}
	}
	slices.SortFunc(st.keys, func(a, b ownKey) int { return keyOrder(s.Epoch, a.epoch, b.epoch) })

	ids := map[sdk.NodeID]bool{}
	for _, n := range s.Nodes {
		if ids[n.ID] {
			continue
		}
		ids[n.ID] = true
		if n.ID == s.Self {
			st.selfExit = n.Exit || n.Has(sdk.CapMail2News)
			continue
		}
		if !n.Healthy {
			continue
		}
		key := currentKey(n.Keys, s.Epoch, f.publicSize())
		if key == nil {
			continue
		}
		kem, err := f.parseKey(key)
		if err != nil {
			continue
		}
		st.candidates = append(st.candidates, candidate{id: n.ID, exit: n.Exit, news: n.Has(sdk.CapMail2News), key: key, kem: kem})
	}
	return st, nil
}

// keyOrder sorts epochs for Mix: the current epoch first (nearly every
// packet), then the previous one (packets built just before the epoch
// changed, in flight during the grace period), then the next one (senders
// whose clock runs ahead), then older, then later: by distance from
// current, the past first at equal distance. Every miss costs one X25519
// and one HMAC (~50 µs) before the header MAC fails, so the likely key
// goes first.
func keyOrder(current, a, b uint64) int {
	da, db := dist(current, a), dist(current, b)
	if c := cmp.Compare(da, db); c != 0 {
		return c
	}
	return cmp.Compare(a, b)
}

func dist(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// currentKey returns the size-byte public key of epoch e from keys, or nil.
func currentKey(keys []sdk.EpochKey, e uint64, size int) []byte {
	for _, k := range keys {
		if k.Epoch == e && len(k.Public) == size {
			return k.Public
		}
	}
	return nil
}
