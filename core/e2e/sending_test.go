package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// outFrames counts the frames a node has sent so far (its frame log's
// "out" lines).
func outFrames(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "out ") {
			n++
		}
	}
	return n
}

// frameCounts samples a frame log every window, n times: frames sent per
// window. start runs right after the first window began.
func frameCounts(t testing.TB, path string, window time.Duration, n int, start func()) []int {
	t.Helper()
	out := make([]int, 0, n)
	prev := outFrames(t, path)
	tick := time.NewTicker(window)
	defer tick.Stop()
	if start != nil {
		go start()
	}
	for len(out) < n {
		<-tick.C
		cur := outFrames(t, path)
		out = append(out, cur-prev)
		prev = cur
	}
	return out
}

func meanVar(xs []int) (mean, variance float64) {
	for _, x := range xs {
		mean += float64(x)
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		variance += (float64(x) - mean) * (float64(x) - mean)
	}
	return mean, variance / float64(len(xs)-1)
}

// rateDistinguisher tells whether a node's frames per window after users
// submitted mail (post) differ from those before (pre), the way an observer
// of its links would: a window far above anything the pre-submission rate
// explains (a burst), or a shifted mean (Welch's t beyond 4). Windows are
// Poisson-like counts; the burst bound is μ + 6σ + 6 with σ taken from the
// larger of the observed variance and μ, so a quiet network with
// overdispersion from the pool's batches stays below it.
func rateDistinguisher(pre, post []int) (bool, string) {
	mPre, vPre := meanVar(pre)
	mPost, vPost := meanVar(post)
	sd := math.Sqrt(math.Max(vPre, mPre))
	bound := mPre + 6*sd + 6
	for i, c := range post {
		if float64(c) > bound {
			return true, fmt.Sprintf("window %d has %d frames, above %.1f (pre-submission mean %.1f)", i, c, bound, mPre)
		}
	}
	tstat := (mPost - mPre) / math.Sqrt(vPre/float64(len(pre))+vPost/float64(len(post)))
	if math.Abs(tstat) > 4 {
		return true, fmt.Sprintf("mean %.2f frames per window after, %.2f before (t = %.1f)", mPost, mPre, tstat)
	}
	return false, fmt.Sprintf("means %.2f and %.2f (t = %.1f), largest window %d, bound %.1f", mPre, mPost, tstat, slicesMax(post), bound)
}

func slicesMax(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// TestSendingRateIgnoresUserTraffic: the frames the entry node emits per
// 500 ms window, before and after 50 small messages and one of 1.5 MiB
// (25 fragments padded to its size class, 32 packets; 82 packets in all)
// are submitted to it at once, cannot be
// told apart (no burst window, no shifted mean), and all 51 messages are
// delivered: its own packets wait in the send queue and leave
// at the ticks of the λ_P Poisson process instead of the drop packets that
// would have filled those ticks (Loopix §4.2). Negative control: the same
// distinguisher flags the post-submission trace with the 50 packets added
// on top within one window, which is how the pool released them before
// (the additive behaviour, seen on the old code as one window of 50+).
func TestSendingRateIgnoresUserTraffic(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startMixnet(t, 4, sink.Addr, map[string]any{
		"mix.send_rate": 5,
		// 51 sessions at once from this one client
		"listeners.0.max_sessions_per_client": 100,
	})
	m.waitHealthy(t)
	log := filepath.Join(m.dir, "node1", "frames.log")
	const window, windows = 500 * time.Millisecond, 40
	// let loops, probes and every node's schedule settle
	time.Sleep(3 * time.Second)
	pre := frameCounts(t, log, window, windows, nil)

	const msgs, bigPackets = 50, 32
	big := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte(strings.Repeat("x", 78)+"\r\n"), (3<<19)/80)...)
	var wg sync.WaitGroup
	errs := make(chan error, msgs+1)
	submit := func() {
		for i := 0; i < msgs; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- sendRaw(m.smtp[0], "a@example.org", []string{fmt.Sprintf("r%d@example.net", i)}, []byte("Subject: s\r\n\r\nbody\r\n"), false)
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- sendRaw(m.smtp[0], "a@example.org", []string{"big@example.net"}, big, false)
		}()
	}
	post := frameCounts(t, log, window, windows, submit)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("submitting: %v", err)
		}
	}
	if !eventuallyCount(func() int { return sink.Count() }, msgs+1, 60*time.Second) {
		t.Fatalf("%d of %d messages delivered", sink.Count(), msgs+1)
	}
	st := lastStats(m.nodes[0].log())
	if statValue(st, "own_sent") < msgs+bigPackets || statValue(st, "sphinx_packets") != msgs+bigPackets {
		t.Fatalf("the entry made %d packets and sent %d at ticks, want %d: %s", statValue(st, "sphinx_packets"), statValue(st, "own_sent"), msgs+bigPackets, st)
	}
	t.Logf("pre %v\npost %v", pre, post)

	if diff, why := rateDistinguisher(pre, post); diff {
		t.Errorf("an observer of the entry's links sees the users' mail: %s", why)
	} else {
		t.Logf("indistinguishable: %s", why)
	}

	// Negative control: the additive behaviour, 50 packets on top of the
	// schedule within one window, is flagged.
	additive := append([]int(nil), post...)
	additive[1] += msgs
	if diff, why := rateDistinguisher(pre, additive); !diff {
		t.Errorf("the distinguisher misses 50 packets added in one window: %s", why)
	}
}

// eventuallyCount waits until f() reaches want.
func eventuallyCount(f func() int, want int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() >= want {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return f() >= want
}

// TestSendQueueFullRefusesMailWith452: with a schedule too slow for the
// mail (λ_P = 0.01/s, send_queue_limit 1), the entry's send queue fills
// with the first message's packet; the next RCPT TO gets 452 4.3.1, the
// [STATS] line shows the queue and its wait, and nothing is lost: the
// first message is still queued, not sent around the schedule.
func TestSendQueueFullRefusesMailWith452(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startMixnet(t, 4, sink.Addr, map[string]any{
		"mix.send_rate":        0.01,
		"mix.send_queue_limit": 1,
	})
	m.waitHealthy(t)
	if err := sendRaw(m.smtp[0], "a@example.org", []string{"first@example.net"}, []byte("Subject: 1\r\n\r\none\r\n"), false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for statValue(lastStats(m.nodes[0].log()), "send_queue") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the first message's packet never reached the send queue: %s", lastStats(m.nodes[0].log()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	err := sendRaw(m.smtp[0], "a@example.org", []string{"second@example.net"}, []byte("Subject: 2\r\n\r\ntwo\r\n"), false)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
		t.Fatalf("second message with the send queue full: %v, want 452 4.3.1", err)
	}
	time.Sleep(1500 * time.Millisecond) // one more [STATS] line
	st := lastStats(m.nodes[0].log())
	if statValue(st, "send_queue") != 1 || !strings.Contains(st, "send_wait=") {
		t.Fatalf("[STATS] does not show the waiting packet: %s", st)
	}
	if sink.Count() != 0 && statValue(st, "own_sent") == 0 {
		t.Fatalf("a message was delivered without its packet leaving at a tick")
	}
}
