package mixnet

import (
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func nid(b byte) sdk.NodeID { return sdk.NodeID{b} }

// TestLoopStatsAttributesToEveryNodeOfThePath: a returned or lost loop
// counts for every node of its path except this one, once per node;
// reliability, median and 95th percentile follow from the outcomes.
func TestLoopStatsAttributesToEveryNodeOfThePath(t *testing.T) {
	self, a, b, c := nid(1), nid(2), nid(3), nid(4)
	s := newLoopStats()
	now := time.Now()
	// 100 loops over a, b back to self, latencies 1..100 ms.
	for i := 1; i <= 100; i++ {
		p := []sdk.NodeID{a, b, self}
		s.sent(self, p, now)
		s.finished(self, p, now, time.Duration(i)*time.Millisecond, false)
	}
	// 10 loops over a, c (c twice on the path), lost; 5 still out.
	for range 10 {
		p := []sdk.NodeID{a, c, c, self}
		s.sent(self, p, now)
		s.finished(self, p, now, 0, true)
	}
	for range 5 {
		s.sent(self, []sdk.NodeID{c, self}, now)
	}
	sa, sb, sc := s.snapshot(a, now), s.snapshot(b, now), s.snapshot(c, now)
	if sa.Returned != 100 || sa.Lost != 10 || sa.Pending != 0 {
		t.Fatalf("a: %+v", sa)
	}
	if sb.Returned != 100 || sb.Lost != 0 || sb.Reliability != 1 {
		t.Fatalf("b: %+v", sb)
	}
	if sc.Returned != 0 || sc.Lost != 10 || sc.Pending != 5 || sc.Reliability != 0 || sc.LatencyMedian != 0 {
		t.Fatalf("c: %+v", sc)
	}
	if want := 100.0 / 110; sa.Reliability != want {
		t.Fatalf("a reliability %v, want %v", sa.Reliability, want)
	}
	if sa.LatencyMedian != 50*time.Millisecond || sa.LatencyHigh != 95*time.Millisecond {
		t.Fatalf("a latency median %v p95 %v, want 50ms 95ms", sa.LatencyMedian, sa.LatencyHigh)
	}
	if st := s.snapshot(self, now); st.Returned+st.Lost+st.Pending != 0 {
		t.Fatalf("this node counted on its own loops: %+v", st)
	}
	if st := s.snapshot(nid(9), now); st.Reliability != -1 {
		t.Fatalf("a node without loops has reliability %v, want -1 (unknown)", st.Reliability)
	}
}

// TestLoopStatsWindowIsBounded: only the last loopStatsWindow loops of the
// last loopStatsAge count, and at most loopStatsNodes nodes are kept.
func TestLoopStatsWindowIsBounded(t *testing.T) {
	self, a := nid(1), nid(2)
	s := newLoopStats()
	start := time.Now()
	// A node was down for a while long ago, then 3×window returned loops.
	for range 50 {
		s.finished(self, []sdk.NodeID{a}, start.Add(-25*time.Hour), 0, true)
	}
	for i := range 3 * loopStatsWindow {
		s.finished(self, []sdk.NodeID{a}, start, time.Duration(i)*time.Millisecond, false)
	}
	st := s.snapshot(a, start)
	if st.Returned != loopStatsWindow || st.Lost != 0 {
		t.Fatalf("window holds %d returned, %d lost; want %d, 0", st.Returned, st.Lost, loopStatsWindow)
	}
	// the oldest loops left the window: the median is of the last ones
	if floor := time.Duration(2*loopStatsWindow) * time.Millisecond; st.LatencyMedian < floor {
		t.Fatalf("median %v from loops that left the window (want >= %v)", st.LatencyMedian, floor)
	}
	// Lost loops older than loopStatsAge no longer count.
	s2 := newLoopStats()
	s2.finished(self, []sdk.NodeID{a}, start.Add(-25*time.Hour), 0, true)
	s2.finished(self, []sdk.NodeID{a}, start, time.Millisecond, false)
	if st := s2.snapshot(a, start); st.Lost != 0 || st.Reliability != 1 {
		t.Fatalf("a loop lost 25 h ago still counts: %+v", st)
	}
	// Nodes: never more than loopStatsNodes; the least recent goes first.
	s3 := newLoopStats()
	for i := range loopStatsNodes + 10 {
		id := sdk.NodeID{byte(i), byte(i >> 8), 7}
		s3.sent(self, []sdk.NodeID{id}, start.Add(time.Duration(i)*time.Second))
	}
	if len(s3.nodes) != loopStatsNodes {
		t.Fatalf("%d nodes kept, bound %d", len(s3.nodes), loopStatsNodes)
	}
	if _, ok := s3.nodes[sdk.NodeID{0, 0, 7}]; ok {
		t.Fatal("the least recently updated node was kept")
	}
	last := loopStatsNodes + 9
	if _, ok := s3.nodes[sdk.NodeID{byte(last), byte(last >> 8), 7}]; !ok {
		t.Fatal("the newest node was evicted")
	}
}
