package mixnet

import (
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// TestFullRefusalsWaitLongerAndExcuseLoops: each full refusal in a row by
// one node doubles the wait before the next send to it (with its jitter,
// up to the cap), a packet it takes resets the wait, and a loop sent
// through it before it was seen full is excused, one sent after is not.
func TestFullRefusalsWaitLongerAndExcuseLoops(t *testing.T) {
	h := newHealth()
	a, b := sdk.NodeID{1}, sdk.NodeID{2}
	h.probeOK(a)
	h.probeOK(b)
	for i := range 12 {
		w := h.sawFull(a)
		nominal := min(fullWaitMin<<i, fullWaitMax)
		if w < nominal/2 || w > nominal*3/2 {
			t.Fatalf("refusal %d: wait %v, want %v ± 50%%", i+1, w, nominal)
		}
	}
	if !h.healthy(a) {
		t.Fatal("full refusals marked the node down")
	}
	h.notFull(a)
	if w := h.sawFull(a); w > fullWaitMin*3/2 {
		t.Fatalf("after a packet was taken: wait %v, want about %v", w, fullWaitMin)
	}

	before := time.Now().Add(-time.Second)
	if !h.fullSince([]sdk.NodeID{b, a}, before) {
		t.Error("a loop sent before its path's node was seen full is not excused")
	}
	if h.fullSince([]sdk.NodeID{b}, before) {
		t.Error("a loop through no full node is excused")
	}
	if h.fullSince([]sdk.NodeID{a, b}, time.Now().Add(time.Second)) {
		t.Error("a loop sent after the node was last seen full is excused")
	}
	h.stillFull(b)
	if !h.fullSince([]sdk.NodeID{b}, before) {
		t.Error("a probe that found the node full does not excuse its loops")
	}
}

// TestNodeFullForTooLongLeavesPaths: a node that stays full (refusals and
// probes that find it full, nothing taken) is healthy for fullOffPaths,
// then left off paths, and back on them as soon as it takes a packet
// (a probe that claims room is not enough while packets wait for it).
func TestNodeFullForTooLongLeavesPaths(t *testing.T) {
	h := newHealth()
	id := sdk.NodeID{3}
	h.probeOK(id)
	h.sawFull(id)
	h.stillFull(id)
	if !h.healthy(id) {
		t.Fatal("a node just found full is off paths")
	}
	h.mu.Lock()
	h.nodes[id].fullFrom = time.Now().Add(-fullOffPaths + time.Minute)
	h.mu.Unlock()
	h.stillFull(id)
	if !h.healthy(id) {
		t.Fatal("a node full for less than fullOffPaths is off paths")
	}
	h.mu.Lock()
	h.nodes[id].fullFrom = time.Now().Add(-fullOffPaths - time.Second)
	h.mu.Unlock()
	h.stillFull(id)
	if h.healthy(id) {
		t.Fatalf("a node full for longer than %v is still on paths", fullOffPaths)
	}
	h.probeOK(id)
	h.mayTry(id) // a probe claims room while packets wait for it
	if h.healthy(id) {
		t.Fatal("a probe's claim of room, not yet borne out by a packet taken, put it back on paths")
	}
	h.notFull(id) // it took a packet
	if !h.healthy(id) {
		t.Fatal("a node a probe found with room is still off paths")
	}
}
