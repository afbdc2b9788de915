package mixnet

import "time"

// SetCacheLimit bounds the packets n keeps in memory (inbound and
// outbound) to limit (negative: none), as if its caches were full.
func SetCacheLimit(n *Node, limit int64) {
	n.inbound.limit.Store(limit)
	n.outbound.limit.Store(limit)
}

// SetFullWait sets the bounds of the wait before a packet refused as full
// is sent again (flow.go) and returns a func that restores them.
func SetFullWait(lo, hi time.Duration) (restore func()) {
	oldLo, oldHi := fullWaitMin, fullWaitMax
	fullWaitMin, fullWaitMax = lo, hi
	return func() { fullWaitMin, fullWaitMax = oldLo, oldHi }
}
