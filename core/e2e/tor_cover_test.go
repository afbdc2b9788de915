package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// observed is what an observer of a node's Tor traffic learns about one
// delivery: the bytes of its stream each way (seen as 512-byte cells) and
// when it started.
type observed struct {
	up, down int64
	at       time.Time
}

func (o observed) cells() (int64, int64) { return (o.up + 511) / 512, (o.down + 511) / 512 }

// tap forwards connections to target and records, per connection, the
// bytes each way once it closes: the stream as the onion service's side of
// Tor carries it, which is what a delivery costs on the sending node's
// circuits.
type tap struct {
	addr string
	mu   sync.Mutex
	seen []observed
}

func newTap(t *testing.T, target string) *tap {
	t.Helper()
	tp := &tap{}
	tp.addr = peers.ServeTCP(t, func(c net.Conn) {
		at := time.Now()
		u, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer u.Close()
		upc := make(chan int64)
		go func() {
			n, _ := io.Copy(u, c)
			u.(*net.TCPConn).CloseWrite()
			upc <- n
		}()
		down, _ := io.Copy(c, u)
		up := <-upc
		tp.mu.Lock()
		tp.seen = append(tp.seen, observed{up: up, down: down, at: at})
		tp.mu.Unlock()
	})
	return tp
}

func (tp *tap) take() []observed {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	out := tp.seen
	tp.seen = nil
	return out
}

func (tp *tap) count() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return len(tp.seen)
}

// bestThreshold is the balanced accuracy of the best observer that tells
// real from cover deliveries by one number per delivery (a cell count)
// and one threshold: 0.5 is a coin toss, 1 tells every one apart.
func bestThreshold(real, cover []int64) float64 {
	vals := append(append([]int64{}, real...), cover...)
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	best := 0.5
	for _, th := range vals {
		var rLow, cLow float64
		for _, v := range real {
			if v <= th {
				rLow++
			}
		}
		for _, v := range cover {
			if v <= th {
				cLow++
			}
		}
		// "at or below th is real", or the other way round
		acc := (rLow/float64(len(real)) + 1 - cLow/float64(len(cover))) / 2
		best = max(best, acc, 1-acc)
	}
	return best
}

// TestPluto2CoverMessagesLeaveThroughTorLikeRealMail: configs/pluto2.yaml
// with its `cover:` section delivers cover messages through Tor to a cover
// sink's onion service while it delivers real mail to another onion (the
// node's tor reports a stream for each delivery seen at either service, on
// circuits of their own: isolation per destination). An
// observer of the node's Tor traffic sees, per delivery, the cells each
// way: with the pad stage, cover and real deliveries have the same
// counts (no threshold tells them apart better than a coin toss, and the
// real mail here is much shorter than the cover bodies), one stream per
// message for both. Negative control: the same run without the pad stage
// lets the observer tell them apart (the test detects the difference).
func TestPluto2CoverMessagesLeaveThroughTorLikeRealMail(t *testing.T) {
	tn := peers.Tor(t)
	realSink, coverSink := peers.SmtpSink(t), peers.SmtpSink(t)
	realTap, coverTap := newTap(t, realSink.Addr), newTap(t, coverSink.Addr)
	realOnion := tn.AddOnion(t, 25, realTap.addr)
	coverOnion := tn.AddOnion(t, 25, coverTap.addr)
	const nReal, nCover = 12, 12

	// The node's streams as its tor reports them: target onion -> circuits
	// and the number of streams that opened.
	ctl, err := peers.DialTorControl(tn.ControlAddr, tn.ControlCookie)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Cmd("SETEVENTS STREAM"); err != nil {
		t.Fatal(err)
	}
	var smu sync.Mutex
	streams, circuits := map[string]int{}, map[string]map[string]bool{}
	go func() {
		for {
			ev, err := ctl.Event(time.Hour)
			if err != nil {
				return
			}
			// 650 STREAM <StreamID> SUCCEEDED <CircuitID> <Target>
			f := strings.Fields(ev)
			if len(f) >= 5 && f[0] == "STREAM" && f[2] == "SUCCEEDED" {
				onion, _, _ := strings.Cut(f[4], ":")
				smu.Lock()
				streams[onion]++
				if circuits[onion] == nil {
					circuits[onion] = map[string]bool{}
				}
				circuits[onion][f[3]] = true
				smu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { ctl.Close() })

	run := func(pad bool) (realSeen, coverSeen []observed) {
		pipeline := []map[string]any{}
		for _, st := range profilePipeline(t, "pluto2.yaml") {
			if st["name"] == "pad" && !pad {
				continue
			}
			if st["name"] == "delay" {
				st["config"] = map[string]any{"mean": "50ms", "min": "10ms", "max": "200ms"}
			}
			pipeline = append(pipeline, st)
		}
		in := freeAddr(t)
		cfg, data := profile(t, "configs/pluto2.yaml", map[string]any{
			"listeners.0.address": in,
			"scheduler.window":    "1s",
			"log.stats_interval":  "2s",
			"pipeline":            pipeline,
			"tor": map[string]any{
				"socks_address":   tn.SocksAddr,
				"control_address": tn.ControlAddr,
				"cookie_file":     tn.ControlCookie,
			},
			// Cover bodies of 3-7 KiB, real ones below 1.5 KiB: unpadded,
			// the sizes alone give cover away.
			"cover": map[string]any{"interval": "500ms", "to": []string{"sink@" + coverOnion}, "min_size": 3000, "max_size": 7000},
		})
		n := startNode(t, cfg, data, in)
		n.waitLog(t, "[COVER] cover messages on", 30*time.Second)
		for i := range nReal {
			body := strings.Repeat("real mail line\r\n", 12+rand.IntN(80))
			// "dest" and the cover sink's "sink": envelopes of one length
			if err := sendRaw(in, "someone@example.org", []string{"dest@" + realOnion}, []byte(fmt.Sprintf("Subject: real %d\r\n\r\n%s", i, body)), false); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 3*time.Minute, "real and cover deliveries through Tor", func() bool {
			return realTap.count() >= nReal && coverTap.count() >= nCover
		})
		// Streams still open now are cut by the stop: not deliveries.
		realSeen, coverSeen = realTap.take(), coverTap.take()
		n.stop()
		time.Sleep(time.Second)
		realTap.take()
		coverTap.take()
		return realSeen, coverSeen
	}

	distinguish := func(realSeen, coverSeen []observed) (upAcc, downAcc float64, line string) {
		var ru, rd, cu, cd []int64
		for _, o := range realSeen {
			u, d := o.cells()
			ru, rd = append(ru, u), append(rd, d)
		}
		for _, o := range coverSeen {
			u, d := o.cells()
			cu, cd = append(cu, u), append(cd, d)
		}
		return bestThreshold(ru, cu), bestThreshold(rd, cd), fmt.Sprintf("cells out: real %v cover %v; cells in: real %v cover %v", ru, cu, rd, cd)
	}

	realSeen, coverSeen := run(true)
	if len(realSeen) != nReal {
		t.Errorf("%d streams reached the real destination for %d messages (one stream per message expected)", len(realSeen), nReal)
	}
	if got := realSink.Count(); got != nReal {
		t.Errorf("real sink got %d messages, want %d", got, nReal)
	}
	// (The cover sink keeps receiving while the node runs: its count is
	// not compared with the streams taken above.)
	if got := coverSink.Count(); got < nCover {
		t.Errorf("cover sink got %d messages, want >= %d", got, nCover)
	}
	smu.Lock()
	if streams[coverOnion] < len(coverSeen) || streams[realOnion] < len(realSeen) {
		t.Errorf("the node's tor opened %d streams to the cover sink and %d to the real destination, for %d and %d deliveries seen there", streams[coverOnion], streams[realOnion], len(coverSeen), len(realSeen))
	}
	for c := range circuits[coverOnion] {
		if circuits[realOnion][c] {
			t.Errorf("cover and real deliveries shared circuit %s (isolation per destination)", c)
		}
	}
	t.Logf("streams through tor: cover %d on circuits %v, real %d on circuits %v", streams[coverOnion], circuitIDs(circuits[coverOnion]), streams[realOnion], circuitIDs(circuits[realOnion]))
	smu.Unlock()
	up, down, line := distinguish(realSeen, coverSeen)
	t.Logf("padded: %s; best observer: %.2f (out), %.2f (in)", line, up, down)
	if up > 0.6 || down > 0.6 {
		t.Errorf("padded: an observer tells cover from real mail with balanced accuracy %.2f (out) / %.2f (in); want at most 0.6\n%s", up, down, line)
	}

	// Negative control: the same traffic without padding.
	realSeen, coverSeen = run(false)
	up, _, line = distinguish(realSeen, coverSeen)
	t.Logf("unpadded: %s; best observer: %.2f", line, up)
	if up < 0.9 {
		t.Errorf("negative control: without padding the observer should tell cover from real (accuracy >= 0.9), got %.2f: the test cannot see a size leak\n%s", up, line)
	}
}

func circuitIDs(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
