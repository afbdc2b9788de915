package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestCoverNeverTakesTheRoomOfRealMail: configs/pluto2.yaml with its
// queue limit lowered to 10 items, cover messages every 20 ms (on average)
// and the cover sink down (every delivery is deferred, with a retry an
// hour later). Cover items pile up in the queue like deferred real mail,
// but never past half of queue.max_items: a real message still gets 250,
// not 451 4.3.2. Without the half, cover filled the queue within a second
// and locked real mail out for the whole retry schedule.
func TestCoverNeverTakesTheRoomOfRealMail(t *testing.T) {
	down := freeAddr(t) // nothing listens there: the cover sink is down
	in := freeAddr(t)
	cfg, data := profile(t, "configs/pluto2.yaml", map[string]any{
		"listeners.0.address":                   in,
		"listeners.0.relay.rate_limit.messages": 1000,
		"listeners.0.relay.rate_limit.burst":    1000,
		"scheduler.window":                      "1s",
		"queue.max_items":                       10,
		"retry.base":                            "1h",
		"retry.max":                             "2h",
		"pipeline.deliver.config":               map[string]any{"relay_host": down, "tls": "none"},
		"tor":                                   nil,
		"cover":                                 map[string]any{"interval": "20ms", "to": []string{"discard@cover.example"}},
	})
	n := startNode(t, cfg, data, in)
	n.waitLog(t, "[COVER] cover messages on", 30*time.Second)

	queued := func() int {
		out, err := mixmta(t, "queue", "ls", "--json", "-c", cfg)
		if err != nil {
			t.Fatalf("queue ls: %v\n%s", err, out)
		}
		var items []map[string]any
		if err := json.Unmarshal([]byte(out), &items); err != nil {
			t.Fatalf("queue ls --json: %v\n%s", err, out)
		}
		return len(items)
	}
	// Wait until cover has taken what it may, then for about 150 more
	// cover messages' worth of time.
	deadline := time.Now().Add(60 * time.Second)
	for queued() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("no cover piled up: %d items\n%s", queued(), tailLines(n.log(), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	if q := queued(); q > 5 {
		t.Errorf("cover holds %d queue items, want at most half of queue.max_items (5)", q)
	}
	code, out := peers.Swaks(t, "--server", in, "--from", "a@example.org", "--to", "b@example.com",
		"--header", "Subject: real", "--body", "real mail while the cover sink is down")
	if code != 0 {
		t.Errorf("real mail refused while cover piled up: swaks exit %d\n%s", code, out)
	}
	if strings.Contains(n.log(), "[QUEUE] queue full") {
		t.Error("the queue filled up with cover")
	}
}
