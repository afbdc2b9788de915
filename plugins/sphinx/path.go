package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
)

// errTooFewNodes is the temporary error of a path that cannot be built: the
// item stays queued until enough nodes are healthy again. There is never a
// fall-back to direct delivery.
func errTooFewNodes(have, exits, need int, needExit bool) error {
	if needExit && exits == 0 {
		return sdk.Temporary(451, "4.0", "sphinx: no healthy exit node with a key for the current epoch (%d usable nodes)", have)
	}
	return sdk.Temporary(451, "4.0", "sphinx: %d healthy mix nodes with a key for the current epoch, a path needs %d", have, need)
}

// choosePath picks n distinct nodes from cands, uniformly among all such
// paths, with randomness from r (crypto/rand in production). With needExit
// the last hop is exit-capable: the exit is drawn first from the exit
// nodes, then the n-1 others from the remaining nodes, which is uniform
// over the valid paths. cands never holds this node (newMixState left it
// out). Too few nodes (or no exit) is a temporary error.
func choosePath(cands []candidate, n int, needExit bool, r io.Reader) ([]candidate, error) {
	exits := 0
	for _, c := range cands {
		if c.exit {
			exits++
		}
	}
	if len(cands) < n || (needExit && exits == 0) {
		return nil, errTooFewNodes(len(cands), exits, n, needExit)
	}
	pool := make([]int, len(cands)) // indices not yet used
	for i := range pool {
		pool[i] = i
	}
	path := make([]candidate, n)
	k := n
	if needExit {
		j, err := randIntn(r, exits)
		if err != nil {
			return nil, err
		}
		for i, c := range cands {
			if !c.exit {
				continue
			}
			if j == 0 {
				path[n-1] = c
				pool[i] = pool[len(pool)-1]
				pool = pool[:len(pool)-1]
				break
			}
			j--
		}
		k = n - 1
	}
	// Partial Fisher-Yates over the remaining indices.
	for i := 0; i < k; i++ {
		j, err := randIntn(r, len(pool)-i)
		if err != nil {
			return nil, err
		}
		pool[i], pool[i+j] = pool[i+j], pool[i]
		path[i] = cands[pool[i]]
	}
	return path, nil
}

// randIntn returns a uniform integer in [0, n), n >= 1, from 8-byte reads
// of r with rejection sampling (no modulo bias).
func randIntn(r io.Reader, n int) (int, error) {
	if n <= 1 {
		return 0, nil
	}
	limit := math.MaxUint64 - math.MaxUint64%uint64(n) // a multiple of n
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, fmt.Errorf("sphinx: reading randomness: %w", err)
		}
		if v := binary.LittleEndian.Uint64(b[:]); v < limit {
			return int(v % uint64(n)), nil
		}
	}
}

// hopsOf turns a path into NewPacket's hops.
func hopsOf(path []candidate) []sphinx.Hop {
	hops := make([]sphinx.Hop, len(path))
	for i, c := range path {
		hops[i] = sphinx.Hop{NodeID: c.id, MixKey: c.key}
	}
	return hops
}

// idsOf returns the node ids of a path, in order.
func idsOf(path []candidate) []sdk.NodeID {
	ids := make([]sdk.NodeID, len(path))
	for i, c := range path {
		ids[i] = c.id
	}
	return ids
}
