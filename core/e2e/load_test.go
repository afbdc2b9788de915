package e2e

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// fastRelay is relay.yaml with (nearly) zero delays, delivering to addr.
func fastRelay(t *testing.T, relayHost string) *node {
	return relayNode(t, relayHost, map[string]any{
		"pipeline.delay.config.mean": "1ms",
		"pipeline.delay.config.max":  "10ms",
		"scheduler.window":           "50ms",
		"listeners.0.max_sessions":   200,
	})
}

// TestLoadEveryAcceptedMessageDelivered: smtp-source with 20 sessions sends
// 10,000 messages of 1 KiB and 2,000 of 64 KiB through relay.yaml to
// smtp-sink; every message mixmta accepted is delivered.
func TestLoadEveryAcceptedMessageDelivered(t *testing.T) {
	sink := peers.SmtpSink(t)
	n := fastRelay(t, sink.Addr)
	start := time.Now()
	if _, err := peers.SmtpSource(t, n.addr, peers.SourceOptions{Sessions: 20, Count: 10000, Size: 1024,
		From: "a@example.org", To: "b@example.net"}); err != nil {
		t.Fatal(err)
	}
	if _, err := peers.SmtpSource(t, n.addr, peers.SourceOptions{Sessions: 20, Count: 2000, Size: 65536,
		From: "a@example.org", To: "b@example.net"}); err != nil {
		t.Fatal(err)
	}
	accepted := time.Since(start)
	if !sink.WaitCount(12000, 180*time.Second) {
		t.Fatalf("smtp-sink has %d messages, want 12000", sink.Count())
	}
	t.Logf("12,000 messages accepted in %v, all delivered after %v", accepted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	// nothing more may arrive: no duplicates without a crash
	time.Sleep(time.Second)
	if c := sink.Count(); c != 12000 {
		t.Fatalf("smtp-sink has %d messages, want exactly 12000", c)
	}
}

// blaster sends messages with unique body tokens from several sessions and
// records the tokens of messages answered 250.
type blaster struct {
	addr  string
	size  int
	mu    sync.Mutex
	acked []string
	sent  atomic.Int64
	stop  atomic.Bool
}

func (b *blaster) run(sessions, count int) {
	var wg sync.WaitGroup
	per := count / sessions
	for s := 0; s < sessions; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			var c *smtp.Client
			for i := 0; i < per && !b.stop.Load(); i++ {
				if c == nil {
					var err error
					if c, err = smtp.Dial(b.addr); err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					if c.Hello("load.example.org") != nil {
						c.Close()
						c = nil
						continue
					}
				}
				tok := fmt.Sprintf("tok-%02d-%06d-%s", s, i, token())
				if err := b.one(c, tok); err != nil {
					c.Close()
					c = nil
					continue
				}
				b.mu.Lock()
				b.acked = append(b.acked, tok)
				b.mu.Unlock()
				b.sent.Add(1)
			}
			if c != nil {
				c.Quit()
			}
		}(s)
	}
	wg.Wait()
}

func (b *blaster) one(c *smtp.Client, tok string) error {
	if err := c.Mail("load@example.org", nil); err != nil {
		return err
	}
	if err := c.Rcpt("sink@example.net", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Subject: load\r\nTo: sink@example.net\r\n\r\n%s\r\n", tok)
	pad := strings.Repeat("x", 76) + "\r\n"
	for n := 0; n < b.size; n += len(pad) {
		w.Write([]byte(pad))
	}
	return w.Close()
}

var tokRe = regexp.MustCompile(`tok-\d{2}-\d{6}-[0-9a-f]{16}`)

// sinkTokens counts each token in smtp-sink's dump files.
func sinkTokens(t *testing.T, sink *peers.SinkPeer) map[string]int {
	t.Helper()
	ents, err := os.ReadDir(sink.DumpDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		b, err := os.ReadFile(sink.DumpDir + "/" + e.Name())
		if err != nil {
			continue
		}
		for _, m := range tokRe.FindAll(b, -1) {
			out[string(m)]++
		}
	}
	return out
}

func waitTokens(t *testing.T, sink *peers.SinkPeer, acked []string, d time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := sinkTokens(t, sink)
		missing := 0
		for _, tok := range acked {
			if got[tok] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never delivered", missing, len(acked))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestKill9CoreLosesNoAckedMessage: kill -9 of the core in the middle of a
// load, then restart: every message that got a 250 is delivered, duplicates
// never exceed the deliveries that can be in flight (scheduler.concurrency),
// and no plugin process outlives the killed core.
func TestKill9CoreLosesNoAckedMessage(t *testing.T) {
	sink := peers.SmtpSink(t)
	n := fastRelay(t, sink.Addr)
	b := &blaster{addr: n.addr, size: 1024}
	done := make(chan struct{})
	go func() { b.run(20, 4000); close(done) }()
	for b.sent.Load() < 1500 {
		time.Sleep(10 * time.Millisecond)
	}
	kids := n.kill9()
	b.stop.Store(true)
	<-done
	if len(kids) == 0 {
		t.Fatal("no plugin processes found under the core")
	}
	for _, k := range kids {
		if !waitGone(k, 5*time.Second) {
			syscall.Kill(k, syscall.SIGKILL)
			t.Errorf("plugin pid %d outlived the killed core by 5 s", k)
		}
	}
	b.mu.Lock()
	acked := append([]string(nil), b.acked...)
	b.mu.Unlock()
	n.start()
	got := waitTokens(t, sink, acked, 120*time.Second)
	dups := 0
	for _, c := range got {
		if c > 1 {
			dups += c - 1
		}
	}
	const inFlightMax = 16 // scheduler.concurrency default
	t.Logf("acked %d, delivered %d distinct, %d duplicates", len(acked), len(got), dups)
	if dups > inFlightMax {
		t.Fatalf("%d duplicates > %d deliveries that can be in flight", dups, inFlightMax)
	}
}

// TestKill9PluginLosesNothing: kill -9 of the delivery plugin mid-load; the
// core restarts it and every acknowledged message is delivered.
func TestKill9PluginLosesNothing(t *testing.T) {
	sink := peers.SmtpSink(t)
	n := fastRelay(t, sink.Addr)
	b := &blaster{addr: n.addr, size: 1024}
	done := make(chan struct{})
	go func() { b.run(10, 2000); close(done) }()
	for b.sent.Load() < 500 {
		time.Sleep(10 * time.Millisecond)
	}
	victim := 0
	for _, k := range children(n.pid()) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k))
		if bytes.Contains(cmd, []byte("onionmx")) {
			victim = k
		}
	}
	if victim == 0 {
		t.Fatal("onionmx plugin process not found")
	}
	syscall.Kill(victim, syscall.SIGKILL)
	<-done
	b.mu.Lock()
	acked := append([]string(nil), b.acked...)
	b.mu.Unlock()
	if len(acked) < 1900 {
		t.Errorf("only %d of 2000 messages acknowledged while the plugin restarted", len(acked))
	}
	waitTokens(t, sink, acked, 120*time.Second)
	if !strings.Contains(n.log(), "plugin restarted") {
		t.Errorf("log does not show the plugin restart")
	}
}
