package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// seeded is a deterministic io.Reader for statistical tests: a test that
// passes once passes always, and fails only if the algorithm changes.
func seeded(s string) *mrand.ChaCha8 { return mrand.NewChaCha8(sha256.Sum256([]byte(s))) }

// The directory a node's SetMixState gets decides which nodes paths may
// use: healthy ones with a key for the current epoch, never Self; the exit
// last. 3000 paths drawn from a mixed directory obey every rule, and every
// usable node appears in every position it may take.
func TestPathsUseOnlyDistinctHealthyKeyedNodesAndEndAtAnExit(t *testing.T) {
	net := newTestNet(t, 9, testConfig(), 0, 2, 5, 6, 7)
	self := net.nodes[0] // an exit itself: still never on its own paths
	net.nodes[6].healthy = false
	delete(net.nodes[7].keys, testEpoch)   // only previous and next keys
	delete(net.nodes[3].keys, testEpoch+1) // lacks only the next key: usable
	st, err := newMixState(net.stateOf(self), x25519Format)
	if err != nil {
		t.Fatal(err)
	}
	usable := map[string]bool{"node1": true, "node2": true, "node3": true, "node4": true, "node5": true, "node8": true}
	exits := map[string]bool{"node2": true, "node5": true}
	if len(st.candidates) != len(usable) {
		t.Fatalf("%d candidates, want %d (%v)", len(st.candidates), len(usable), usable)
	}
	seen := map[string]map[int]bool{}
	r := seeded("paths")
	for range 3000 {
		path, err := choosePath(st.candidates, 3, true, r)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[sdk.NodeID]bool{}
		for i, c := range path {
			nd := net.byID[c.id]
			if !usable[nd.name] || ids[c.id] {
				t.Fatalf("path %v uses %s (usable %v) or repeats it", pathNames(net, path), nd.name, usable)
			}
			if string(c.key) != string(nd.keys[testEpoch].PublicKey().Bytes()) {
				t.Fatalf("%s's hop key is not its key for the current epoch", nd.name)
			}
			ids[c.id] = true
			if seen[nd.name] == nil {
				seen[nd.name] = map[int]bool{}
			}
			seen[nd.name][i] = true
		}
		if !exits[net.byID[path[2].id].name] {
			t.Fatalf("path %v ends at a non-exit", pathNames(net, path))
		}
	}
	for name := range usable {
		for pos := range 3 {
			may := pos < 2 || exits[name]
			if seen[name][pos] != may {
				t.Errorf("%s at position %d: seen %v, want %v", name, pos, seen[name][pos], may)
			}
		}
	}
}

func pathNames(net *testNet, path []candidate) []string {
	var s []string
	for _, c := range path {
		s = append(s, net.byID[c.id].name)
	}
	return s
}

// Every valid path is equally likely: with 4 candidates (2 exits) and 3
// hops there are 2·3·2 = 12 paths; 24000 draws pass a chi-square test at
// α = 0.001 (df 11, critical value 31.26).
func TestChoosePathIsUniformOverValidPaths(t *testing.T) {
	var cands []candidate
	for i := range 4 {
		cands = append(cands, candidate{id: sdk.NodeID{byte(i + 1)}, exit: i >= 2, key: make([]byte, 32)})
	}
	counts := map[string]int{}
	r := seeded("uniform")
	const draws = 24000
	for range draws {
		p, err := choosePath(cands, 3, true, r)
		if err != nil {
			t.Fatal(err)
		}
		counts[fmt.Sprint(p[0].id[0], p[1].id[0], p[2].id[0])]++
	}
	if len(counts) != 12 {
		t.Fatalf("%d distinct paths, want 12: %v", len(counts), counts)
	}
	exp := float64(draws) / 12
	chi := 0.0
	for _, n := range counts {
		d := float64(n) - exp
		chi += d * d / exp
	}
	if chi > 31.26 {
		t.Fatalf("chi-square %.2f > 31.26: path choice is biased: %v", chi, counts)
	}
}

func TestChoosePathFailsTemporarilyWithTooFewNodes(t *testing.T) {
	mk := func(exits ...bool) []candidate {
		var c []candidate
		for i, e := range exits {
			c = append(c, candidate{id: sdk.NodeID{byte(i + 1)}, exit: e, key: make([]byte, 32)})
		}
		return c
	}
	cases := []struct {
		name     string
		cands    []candidate
		n        int
		needExit bool
		want     string // "" = succeeds
	}{
		{"none", nil, 1, true, "no healthy exit"},
		{"two for three hops", mk(true, false), 3, true, "a path needs 3"},
		{"three without exit", mk(false, false, false), 3, true, "no healthy exit"},
		{"three without exit, drop cover", mk(false, false, false), 3, false, ""},
		{"exactly enough", mk(false, false, true), 3, true, ""},
		{"one hop, one exit", mk(true), 1, true, ""},
		{"zero hops (loop of 1)", nil, 0, false, ""},
		{"five hops of four", mk(true, true, true, true), 5, false, "a path needs 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := choosePath(c.cands, c.n, c.needExit, seeded(c.name))
			if c.want == "" {
				if err != nil || len(p) != c.n {
					t.Fatalf("want a %d-hop path, got %v, %v", c.n, p, err)
				}
				return
			}
			wantTemporary(t, err, c.want)
		})
	}
}

// randIntn is unbiased for an n that does not divide 2^64 (rejection
// sampling): 3 buckets, 30000 draws, chi-square df 2 critical 13.82.
func TestRandIntnIsUniform(t *testing.T) {
	var c [3]int
	r := seeded("intn")
	for range 30000 {
		v, err := randIntn(r, 3)
		if err != nil {
			t.Fatal(err)
		}
		c[v]++
	}
	chi := 0.0
	for _, n := range c {
		d := float64(n) - 10000
		chi += d * d / 10000
	}
	if chi > 13.82 {
		t.Fatalf("chi-square %.2f: %v", chi, c)
	}
	if _, err := randIntn(strings.NewReader("short"), 3); err == nil {
		t.Fatal("want an error when randomness runs out")
	}
}

// Path choice reads crypto/rand in production: paths of two stages built
// with the real reader differ.
func TestRealStagesDrawDifferentPaths(t *testing.T) {
	net := newTestNet(t, 10, testConfig(), 5, 6, 7, 8, 9)
	first := map[sdk.NodeID]bool{}
	for range 20 {
		routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(100, 1))
		if err != nil {
			t.Fatal(err)
		}
		first[routes[0].NextHop] = true
	}
	if len(first) < 3 {
		t.Fatalf("20 messages used only %d distinct first hops of 9", len(first))
	}
}
