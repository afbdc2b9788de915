package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

var buildPoison sync.Once

// poisonPlugin builds the test transformer of testdata/poisonplugin into
// binDir as "e2e-poison".
func poisonPlugin(t *testing.T) {
	t.Helper()
	var err error
	var out []byte
	buildPoison.Do(func() {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "e2e-poison"), "./core/e2e/testdata/poisonplugin")
		cmd.Dir = repoRoot
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("building the poison plugin: %v\n%s", err, out)
	}
}

// poisonNode runs a relay whose first stage is the poison transformer
// (gate file gate) and whose deliverer is onionmx to sink.
func poisonNode(t *testing.T, sink, gate string) (*node, string) {
	t.Helper()
	poisonPlugin(t)
	addr := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(`hostname: mixmta.invalid
log:
  level: info
  stats_interval: 1s
scheduler:
  window: 100ms
retry:
  max_attempts: 9
  base: 500ms
  factor: 2
  jitter: 0
listeners:
  - name: in
    address: %s
    relay:
      networks: [127.0.0.1/32]
pipeline:
  - name: poison
    plugin: e2e-poison
    config:
      gate: %s
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`, addr, gate, sink), nil)
	return startNode(t, cfg, data, addr), cfg
}

type lsItem struct {
	ID       string `json:"id"`
	Stage    string `json:"stage"`
	Held     bool   `json:"held"`
	Reason   string `json:"reason"`
	Attempts int    `json:"attempts"`
}

func queueLs(t *testing.T, cfg string) []lsItem {
	t.Helper()
	out, err := mixmta(t, "queue", "ls", "--json", "-c", cfg)
	if err != nil {
		t.Fatalf("queue ls: %v\n%s", err, out)
	}
	var items []lsItem
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("queue ls --json: %v\n%s", err, out)
	}
	return items
}

// TestPoisonItemsAreQuarantinedAndOthersFlow: 50 poison messages (25 that
// crash the first stage's plugin, 25 that it fails on), then 20 normal
// ones. The 20 are delivered within
// 60 s, the plugin restarts at most twice per crashing item (no restart
// loop), every poison item ends quarantined with its reason in `queue
// ls`, and a released item is delivered once its stage works again.
func TestPoisonItemsAreQuarantinedAndOthersFlow(t *testing.T) {
	sink := peers.SmtpSink(t)
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const crash, fail = 25, 25
	n, cfg := poisonNode(t, sink.Addr, gate)
	for i := 0; i < crash+fail; i++ {
		marker := "crash"
		if i >= crash {
			marker = "fail"
		}
		msg := fmt.Sprintf("Subject: poison\r\nX-Poison: %s\r\n\r\npoison %d\r\n", marker, i)
		if err := sendRaw(n.addr, "a@example.org", []string{"b@example.net"}, []byte(msg), false); err != nil {
			t.Fatalf("poison %d: %v", i, err)
		}
	}
	start := time.Now()
	var toks []string
	for i := 0; i < 20; i++ {
		tok := fmt.Sprintf("tok-99-%06d-%016x", i, start.UnixNano()+int64(i))
		toks = append(toks, tok)
		if err := sendRaw(n.addr, "a@example.org", []string{"b@example.net"}, []byte("Subject: normal\r\n\r\n"+tok+"\r\n"), false); err != nil {
			t.Fatalf("normal %d: %v", i, err)
		}
	}
	waitTokens(t, sink, toks, 60*time.Second)
	t.Logf("20 normal messages delivered %v after the first was sent, behind 50 poison items", time.Since(start).Round(time.Millisecond))

	var held []lsItem
	deadline := time.Now().Add(60 * time.Second)
	for {
		held = held[:0]
		for _, it := range queueLs(t, cfg) {
			if it.Held {
				held = append(held, it)
			}
		}
		if len(held) == crash+fail || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	reasons := map[string]int{}
	for _, it := range held {
		switch {
		case strings.Contains(it.Reason, "poison: quarantined: the plugin crashed 2 times on this item"):
			reasons["crash"]++
		case strings.Contains(it.Reason, "poison: quarantined: failed 5 times (451 4.3.0 poison gate is closed)"):
			reasons["fail"]++
		default:
			t.Errorf("held item %s has reason %q", it.ID, it.Reason)
		}
		if it.Stage != "poison" {
			t.Errorf("held item %s: STAGE %q, want poison", it.ID, it.Stage)
		}
	}
	if reasons["crash"] != crash || reasons["fail"] != fail {
		t.Fatalf("quarantined: %v, want crash=%d fail=%d", reasons, crash, fail)
	}
	restarts := strings.Count(n.log(), "plugin restarted")
	t.Logf("plugin restarts: %d for %d crashing items", restarts, crash)
	if restarts > 2*crash {
		t.Fatalf("%d plugin restarts for %d crashing items: a restart loop", restarts, crash)
	}
	// Nothing is retried any more: the restart count stays put.
	time.Sleep(2 * time.Second)
	if r := strings.Count(n.log(), "plugin restarted"); r != restarts {
		t.Fatalf("plugin restarts went on after quarantine: %d -> %d", restarts, r)
	}

	// Open the gate and release the items that failed on it: delivered.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	before := sink.Count()
	for _, it := range held {
		if !strings.Contains(it.Reason, "gate is closed") {
			continue
		}
		if out, err := mixmta(t, "queue", "release", it.ID, "-c", cfg); err != nil || !strings.Contains(out, "released") {
			t.Fatalf("queue release %s: %v\n%s", it.ID, err, out)
		}
	}
	if !sink.WaitCount(before+fail, 30*time.Second) {
		t.Fatalf("smtp-sink has %d messages after releasing %d, want %d", sink.Count(), fail, before+fail)
	}
	if out, err := mixmta(t, "queue", "release", strings.Repeat("0", 32), "-c", cfg); err == nil {
		t.Fatalf("release of an unknown id succeeded:\n%s", out)
	}
}
