package cover

import (
	"bytes"
	"context"
	"math"
	"net/mail"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func gen() *Generator {
	return New(Options{Interval: time.Second, From: "nobody@node.invalid", To: []string{"a@x.onion", "b@y.onion"}, MinSize: 100, MaxSize: 5000, Hostname: "node.invalid"}, nil)
}

// Each message parses as mail, its body is within the sizes and made of
// CRLF lines no longer than 78 characters, and the recipients are the
// configured sinks.
func TestMessageIsPlainMailOfConfiguredSize(t *testing.T) {
	g := gen()
	seen := map[string]int{}
	for range 500 {
		env, h, b := g.Message(time.Now())
		if len(b) < 100 || len(b) > 5000 {
			t.Fatalf("body size %d outside [100, 5000]", len(b))
		}
		if !bytes.HasSuffix(h, []byte("\r\n\r\n")) || !bytes.HasSuffix(b, []byte("\r\n")) {
			t.Fatalf("header or body not CRLF-terminated")
		}
		for _, line := range bytes.Split(b[:len(b)-2], []byte("\r\n")) {
			if len(line) == 0 || len(line) > 78 || bytes.ContainsAny(line, "\r\n") {
				t.Fatalf("bad body line %q", line)
			}
		}
		m, err := mail.ReadMessage(bytes.NewReader(append(h, b...)))
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("Message-Id") == "" || m.Header.Get("Date") == "" {
			t.Fatal("no Message-ID or Date")
		}
		if env.MailFrom != "nobody@node.invalid" || len(env.RcptTo) != 1 {
			t.Fatalf("envelope %+v", env)
		}
		seen[env.RcptTo[0]]++
	}
	if seen["a@x.onion"] < 150 || seen["b@y.onion"] < 150 {
		t.Fatalf("sinks not chosen at random: %v", seen)
	}
}

// The gaps are exponential with the configured mean: mean and standard
// deviation both close to Interval (a fixed period would have sd 0).
func TestGapsArePoisson(t *testing.T) {
	g := gen()
	const n = 20000
	var sum, sq float64
	for range n {
		x := g.Gap().Seconds()
		sum += x
		sq += x * x
	}
	mean := sum / n
	sd := math.Sqrt(sq/n - mean*mean)
	if math.Abs(mean-1) > 0.05 || math.Abs(sd-1) > 0.08 {
		t.Fatalf("gaps mean %.3f s sd %.3f s, want about 1 and 1", mean, sd)
	}
}

// Run hands messages to accept until cancelled, and skips (does not
// queue) while Room says the queue is full.
func TestRunQueuesUntilCancelledAndRespectsRoom(t *testing.T) {
	g := New(Options{Interval: 5 * time.Millisecond, From: "n@h", To: []string{"s@x"}, MinSize: 10, MaxSize: 10}, nil)
	var mu sync.Mutex
	full, accepted, asked := false, 0, 0
	g.Room = func(int64) bool { mu.Lock(); defer mu.Unlock(); asked++; return !full }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		g.Run(ctx, func(sdk.Envelope, []byte, []byte, time.Time) error {
			mu.Lock()
			accepted++
			mu.Unlock()
			return nil
		})
		close(done)
	}()
	wait := func(cond func() bool) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("timed out")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(func() bool { return accepted >= 5 })
	mu.Lock()
	full, asked = true, 0
	before := accepted
	mu.Unlock()
	wait(func() bool { return asked >= 5 })
	mu.Lock()
	if accepted > before+1 { // one may have passed Room just before
		t.Errorf("%d messages queued while the queue was full", accepted-before)
	}
	mu.Unlock()
	cancel()
	<-done
	if g.Sent.Load() != int64(accepted) {
		t.Errorf("Sent %d, accepted %d", g.Sent.Load(), accepted)
	}
}
