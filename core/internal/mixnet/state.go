package mixnet

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// refresh pushes the mix state when it changed, then rotates keys (a key
// leaves the mixer's memory before its file is deleted), and pushes again
// when rotation changed the keys.
func (n *Node) refresh(ctx context.Context, force bool) {
	n.refreshMu.Lock()
	defer n.refreshMu.Unlock()
	now := time.Now()
	n.push(ctx, now, force)
	if err := n.keys.Ensure(now); err != nil {
		n.log.Error("[MIX] key rotation failed", "error", err)
	}
	n.push(ctx, now, false)
	n.checkPaths()
}

func (n *Node) push(ctx context.Context, now time.Time, force bool) {
	st := sdk.MixState{Epoch: uint64(now.Unix()) / uint64(n.cfg.EpochLength.Seconds()), Keys: n.keys.Keys(now), Self: n.self, KeyDir: n.keys.Dir()}
	for _, d := range n.dir.Nodes() {
		d.Healthy = d.ID == n.self || n.health.healthy(d.ID)
		st.Nodes = append(st.Nodes, d)
	}
	sig := stateSignature(st)
	n.mu.Lock()
	changed := sig != n.lastState
	n.lastState = sig
	n.mu.Unlock()
	if !changed && !force {
		return
	}
	if err := n.mixer.SetMixState(ctx, st); err != nil {
		n.log.Error("[MIX] cannot push mix state", "error", err)
		n.mu.Lock()
		n.lastState = "" // try again next time
		n.mu.Unlock()
		return
	}
	healthy := 0
	for _, d := range st.Nodes {
		if d.Healthy && d.ID != n.self {
			healthy++
		}
	}
	n.log.Info("[HEALTH] mix state pushed", "epoch", st.Epoch, "keys", len(st.Keys), "healthy_nodes", healthy, "nodes", len(st.Nodes)-1)
}

// stateSignature is a digest of everything in a MixState the mixer acts
// on: epoch, own keys, and every node's id, flags and public keys.
func stateSignature(st sdk.MixState) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d|", st.Epoch)
	for _, k := range st.Keys {
		fmt.Fprintf(h, "k%d:%x:%d|", k.Epoch, k.Public, k.NotAfter.Unix())
	}
	for _, d := range st.Nodes {
		fmt.Fprintf(h, "n%x:%v:%v:%q|", d.ID[:], d.Healthy, d.Exit, d.Capabilities)
		for _, k := range d.Keys {
			fmt.Fprintf(h, "%d:%x:%d,", k.Epoch, k.Public, k.NotAfter.Unix())
		}
	}
	return string(h.Sum(nil))
}
