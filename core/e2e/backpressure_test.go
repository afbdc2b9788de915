package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// badOnion is a v3 onion address with one character mistyped: its
// checksum does not match.
const badOnion = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wyd.onion"

// TestPluto2BackpressureNeverDrops: configs/pluto2.yaml (its pipeline of
// random delay, 30 s pool shortened to 3 s, sanitize and pad; delivery to
// a real smtp-sink instead of Tor; its queue limit lowered to 4 items)
// flooded by 4 real SMTP clients (swaks) at once with 24 messages. Each
// message gets 250 or 451 4.3.2 (never a 5xx, never anything else), some
// get 451 (the limit was reached), every 250'd message is delivered
// exactly once, and none refused with 451 is; once the queue has drained,
// mail is accepted again. Before the flood, a mistyped or v2 .onion
// sender or recipient gets 553.
func TestPluto2BackpressureNeverDrops(t *testing.T) {
	sink := peers.SmtpSink(t)
	in := freeAddr(t)
	cfg, data := profile(t, "configs/pluto2.yaml", map[string]any{
		"listeners.0.address":                   in,
		"listeners.0.relay.rate_limit.messages": 1000,
		"listeners.0.relay.rate_limit.burst":    1000,
		"scheduler.window":                      "3s",
		"queue.max_items":                       4,
		"pipeline.deliver.config":               map[string]any{"relay_host": sink.Addr, "tls": "none"},
		"tor":                                   nil,
	})
	n := startNode(t, cfg, data, in)

	send := func(token string) (int, string) {
		return peers.Swaks(t, "--server", in, "--from", "a@example.org", "--to", "b@example.com",
			"--header", "Subject: flood", "--body", "token "+token)
	}
	// Sender/recipient validation: a mistyped (bad checksum) or v2 onion
	// address is refused at the command, never queued to bounce later.
	for _, args := range [][]string{
		{"--from", "a@example.org", "--to", "bob@" + badOnion},
		{"--from", "a@example.org", "--to", "bob@expyuzz4wqqyqhjn.onion"},
		{"--from", "a@" + badOnion, "--to", "b@example.com"},
	} {
		code, out := peers.Swaks(t, append([]string{"--server", in}, args...)...)
		if code == 0 || !strings.Contains(out, "<** 553 5.1.") {
			t.Errorf("swaks %v: exit %d, want 553 5.1.x:\n%s", args, code, out)
		}
	}

	const clients, each = 4, 6
	var mu sync.Mutex
	accepted, refused := map[string]bool{}, map[string]bool{}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				token := fmt.Sprintf("tok-%d-%d-%s", c, i, token())
				code, out := send(token)
				mu.Lock()
				switch {
				case code == 0:
					accepted[token] = true
				case strings.Contains(out, "<** 451 4.3.2") && !strings.Contains(out, "<** 5"):
					refused[token] = true
				default:
					t.Errorf("message %s: swaks exit %d, want 250 or 451 4.3.2:\n%s", token, code, out)
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	if len(refused) == 0 {
		t.Fatalf("no message got 451 with queue.max_items 4 and %d sent at once (%d accepted)", clients*each, len(accepted))
	}
	if len(accepted) == 0 {
		t.Fatal("no message accepted")
	}
	t.Logf("flood: %d accepted, %d refused with 451 4.3.2", len(accepted), len(refused))

	if !sink.WaitCount(len(accepted), 120*time.Second) {
		t.Fatalf("sink got %d of %d accepted messages\n%s", sink.Count(), len(accepted), tailLines(n.log(), 30))
	}
	// Once the queue has drained, mail is accepted again.
	last := "tok-after-" + token()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, out := send(last)
		if code == 0 {
			accepted[last] = true
			break
		}
		if !strings.Contains(out, "<** 451 4.3.2") || time.Now().After(deadline) {
			t.Fatalf("after the queue drained: swaks exit %d\n%s", code, out)
		}
		time.Sleep(time.Second)
	}
	if !sink.WaitCount(len(accepted), 120*time.Second) {
		t.Fatalf("sink got %d of %d accepted messages", sink.Count(), len(accepted))
	}
	time.Sleep(4 * time.Second) // one more pool window: anything else would arrive
	msgs, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		d := string(m.Data)
		i := strings.Index(d, "token tok-")
		if i < 0 {
			t.Errorf("delivered message without a token:\n%s", d)
			continue
		}
		tok := strings.Fields(d[i+len("token "):])[0]
		seen[tok]++
	}
	for tok := range accepted {
		if seen[tok] != 1 {
			t.Errorf("accepted message %s delivered %d times, want once", tok, seen[tok])
		}
	}
	for tok := range refused {
		if seen[tok] != 0 {
			t.Errorf("message %s got 451 but was delivered", tok)
		}
	}
	if len(msgs) != len(accepted) {
		t.Errorf("sink got %d messages, want the %d accepted", len(msgs), len(accepted))
	}
	if !strings.Contains(n.log(), "[QUEUE] queue full") {
		t.Error("no log line for the full queue")
	}
}
