package mixnet

// SetCacheLimit bounds the packets n keeps in memory (inbound and
// outbound) to limit (negative: none), as if its caches were full.
func SetCacheLimit(n *Node, limit int64) {
	n.inbound.limit.Store(limit)
	n.outbound.limit.Store(limit)
}
