// Package simulate measures the sender anonymity a mixnet configuration
// gives, before it is deployed: a discrete-event simulation of a network of
// mix nodes configured like a profile (Sim), and an adversary that analyses
// what it observes of that network (Analyze). The same analysis runs on
// traces of the simulator and on traces recorded from a real network, so the
// model can be checked against the real system.
//
// Anonymity is the Shannon entropy, in bits, of the adversary's probability
// distribution over the possible senders of a delivered message (Serjantov &
// Danezis, "Towards an Information Theoretic Metric for Anonymity", PET
// 2002; Díaz et al., same volume), the metric the Loopix evaluation uses
// (Piotrowska et al., USENIX Security 2017, §5).
package simulate

// EventKind says what an Event records.
type EventKind uint8

const (
	// Submit: user From hands a message to its node To (SMTP into the
	// entry). The observer sees who submitted, where and when.
	Submit EventKind = iota + 1
	// Link: one packet on the link from node From to node To. The observer
	// sees the link ends and the time, nothing of the content (every packet
	// has the same size and is encrypted).
	Link
	// Deliver: node From (an exit) delivers a message out of the network.
	// The observer sees the exit and the time.
	Deliver
)

// Event is one observation in a trace. Time is in seconds from the start of
// the trace. The fields after To are ground truth: the adversary reads them
// only where a compromised node reveals them (Analyze), and the report
// reads Msg and User to score the adversary's guess.
type Event struct {
	T        float64
	Kind     EventKind
	From, To int32

	// Cause is, for a Link event leaving node From, the index of the
	// event that brought this packet's content into From: the Link into
	// From that it forwards, or the Submit of the message it is a fragment
	// of. -1 for a cover packet (drop or loop) that From created.
	Cause int32
	// Msg is the message a Submit or Deliver event is about, and the
	// message a Link event carries a fragment of (-1 for cover).
	Msg int32
	// Terminal marks a Link event whose packet ends at To: the last
	// fragment hop into the exit, a drop packet's last hop, a loop's
	// return.
	Terminal bool
}

// Trace is what the simulator (or a recorder on a real network) produced:
// events in time order, plus what the report needs to score each message.
type Trace struct {
	// Users is the number of possible senders; users are 0..Users-1.
	Users int
	// Nodes is the number of mix nodes; nodes are 0..Nodes-1.
	Nodes int
	// Duration of the trace in seconds.
	Duration float64
	Events   []Event
	// Sender of each message (index = Msg) and its submission time.
	Sender    []int32
	Submitted []float64
	// Fragments of each delivered message: the indices of the Link events
	// that carried its fragments into the exit (ground truth, read only
	// when the exit is compromised).
	Fragments map[int32][]int32
	// Warmup: messages submitted before this time (seconds) are not
	// scored, so every scored message meets a network in steady state.
	Warmup float64
}
