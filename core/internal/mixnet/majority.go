package mixnet

// ConsensusDirectory is a Directory whose nodes come from a consensus of
// directory authorities: nodes a majority of them reached during the
// epoch.
type ConsensusDirectory interface {
	Directory
	// FromConsensus is true while the nodes are a consensus' (not a
	// nodes file's).
	FromConsensus() bool
}

// reachesMajority reports whether this node reaches (finds healthy) more
// than half of the other nodes of a consensus. The authorities reached
// every node of a consensus; when this node reaches only a minority of
// them, its own links are what fails, perhaps blocked by an adversary who
// wants its paths to run through the few nodes it still reaches. Mail is
// then held rather than routed onto what is left. With a nodes file there
// is no network-wide view to compare with, and this holds always.
func (n *Node) reachesMajority(healthy, others int) bool {
	c, ok := n.dir.(ConsensusDirectory)
	if !ok || !c.FromConsensus() {
		return true
	}
	return 2*healthy > others
}

// noConsensus reports whether the nodes come from a consensus and there
// is none in use (none fetched yet, or the last one expired): mail waits
// before the router, without counting failed attempts, until one comes.
func (n *Node) noConsensus() bool {
	c, ok := n.dir.(ConsensusDirectory)
	return ok && c.FromConsensus() && len(c.Nodes()) == 0
}
