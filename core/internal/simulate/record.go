package simulate

import (
	"bufio"
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Recording is what was observed of a real network, to be analysed like a
// simulated trace: every node's frame log (the mix transport's, with a
// time per frame), and the submissions and deliveries (who submitted where
// and when; which exit delivered which message when).
type Recording struct {
	// NodeIDs[i] is node i's id (64 hex digits), as peers appear in the
	// frame logs; FrameLogs[i] is node i's frame log file.
	NodeIDs   []string
	FrameLogs []string
	// Users is the number of possible senders.
	Users       int
	Submissions []Submission
	Deliveries  []Delivery
	// Warmup: messages submitted before Start+Warmup are not scored.
	Warmup time.Duration
}

// Submission is one message handed to node Node by user User.
type Submission struct {
	T          time.Time
	User, Node int
}

// Delivery is the message Submissions[Msg] leaving the network at exit
// node Node.
type Delivery struct {
	T         time.Time
	Node, Msg int
}

// FromRecording builds the trace an observer of every link records: a Link
// event per frame a node sent ("out" lines of its frame log), plus the
// submissions and deliveries. Times become seconds from the first event.
// There is no ground truth in it, so only a passive adversary (no
// compromised nodes) can analyse it. Errors: unreadable logs, malformed
// lines, a peer that is not one of NodeIDs.
func FromRecording(r Recording) (*Trace, error) {
	index := map[string]int32{}
	for i, id := range r.NodeIDs {
		index[id] = int32(i)
	}
	type timed struct {
		ns int64
		ev Event
	}
	var all []timed
	for i, path := range r.FrameLogs {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for line := 1; sc.Scan(); line++ {
			fs := strings.Fields(sc.Text())
			if len(fs) != 4 {
				f.Close()
				return nil, fmt.Errorf("%s:%d: want <dir> <ns> <peer> <size>", path, line)
			}
			if fs[0] != "out" {
				continue
			}
			ns, err := strconv.ParseInt(fs[1], 10, 64)
			to, ok := index[fs[2]]
			if err != nil || !ok {
				f.Close()
				return nil, fmt.Errorf("%s:%d: bad time or unknown peer", path, line)
			}
			all = append(all, timed{ns, Event{Kind: Link, From: int32(i), To: to, Cause: -1, Msg: -1}})
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	for i, s := range r.Submissions {
		all = append(all, timed{s.T.UnixNano(), Event{Kind: Submit, From: int32(s.User), To: int32(s.Node), Cause: -1, Msg: int32(i)}})
	}
	for _, d := range r.Deliveries {
		all = append(all, timed{d.T.UnixNano(), Event{Kind: Deliver, From: int32(d.Node), To: -1, Cause: -1, Msg: int32(d.Msg)}})
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("nothing recorded")
	}
	slices.SortStableFunc(all, func(a, b timed) int { return cmp.Compare(a.ns, b.ns) })
	t0 := all[0].ns
	tr := &Trace{Users: r.Users, Nodes: len(r.NodeIDs), Fragments: map[int32][]int32{}, Warmup: r.Warmup.Seconds()}
	tr.Sender = make([]int32, len(r.Submissions))
	tr.Submitted = make([]float64, len(r.Submissions))
	for i, s := range r.Submissions {
		tr.Sender[i] = int32(s.User)
		tr.Submitted[i] = float64(s.T.UnixNano()-t0) / 1e9
	}
	for _, a := range all {
		a.ev.T = float64(a.ns-t0) / 1e9
		tr.Events = append(tr.Events, a.ev)
	}
	tr.Duration = tr.Events[len(tr.Events)-1].T
	return tr, nil
}
