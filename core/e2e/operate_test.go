package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// operateConfig is a one-stage relay delivering to relayHost, retrying
// after an hour, with a pool that keeps minPool items.
func operateConfig(addr, relayHost string, minPool int) string {
	return fmt.Sprintf(`hostname: mixmta.invalid
log:
  level: info
scheduler:
  window: 100ms
  min_pool: %d
retry:
  base: 1h
  jitter: 0
listeners:
  - name: in
    address: %s
    relay:
      networks: [127.0.0.1/32]
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
      connect_timeout: 2s
`, minPool, addr, relayHost)
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lsRow(t *testing.T, cfg, id string) string {
	t.Helper()
	out, err := mixmta(t, "queue", "ls", "-c", cfg)
	if err != nil {
		t.Fatalf("queue ls: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id) {
			return l
		}
	}
	t.Fatalf("queue ls has no row for %s:\n%s", id, out)
	return ""
}

// TestDeliveryLogLinesAndQueueOperations: each delivery attempt is one
// [DELIVER] line with status, reply, delays and no address; a deferred
// item shows its stage and reason in `queue ls`; `queue show` prints the
// header without address fields unless asked; hold, release, requeue,
// flush (past a pool that would keep the items) and `delete ALL` act on
// the running daemon.
func TestDeliveryLogLinesAndQueueOperations(t *testing.T) {
	addr := freeAddr(t)
	down := freeAddr(t) // nothing listens: deliveries are deferred
	cfg, data := profile(t, operateConfig(addr, down, 0), nil)
	n := startNode(t, cfg, data, addr)
	for i := 0; i < 2; i++ {
		msg := fmt.Sprintf("From: Secret Sender <secret-sender@example.org>\r\nTo: rcpt@example.net\r\nSubject: op %d\r\n\r\nbody\r\n", i)
		if err := sendRaw(addr, "secret-sender@example.org", []string{"rcpt@example.net"}, []byte(msg), false); err != nil {
			t.Fatal(err)
		}
	}
	var items []lsItem
	waitFor(t, 20*time.Second, "2 deferred items", func() bool {
		items = queueLs(t, cfg)
		return len(items) == 2 && items[0].Attempts == 1 && items[1].Attempts == 1
	})
	deferLine := regexp.MustCompile(`\[DELIVER\] deferred: id=[0-9a-f]{32} msg=[0-9a-f]{32} stage=deliver status=deferred reply="4\d\d 4\.\d\.\d [^"]*" relay=none rcpts=1 delay=[0-9.]+ delays=[0-9.]+/[0-9.]+/[0-9.]+ attempt=1`)
	if !deferLine.MatchString(n.log()) {
		t.Fatalf("no [DELIVER] deferred line with status, reply and delays:\n%s", tailLines(n.log(), 20))
	}
	if strings.Contains(n.log(), "secret-sender") || strings.Contains(n.log(), "rcpt@example.net") {
		t.Fatalf("an address is in the log at info:\n%s", n.log())
	}
	id, other := items[0].ID, items[1].ID
	row := lsRow(t, cfg, id)
	if !regexp.MustCompile(`\sdeliver\s+deferred\s.*deliver: 4\d\d 4\.\d\.\d`).MatchString(row) {
		t.Fatalf("queue ls row of a deferred item lacks STAGE deliver, STATE deferred and the reason:\n%s", row)
	}

	out, err := mixmta(t, "queue", "show", id, "-c", cfg)
	if err != nil || !strings.Contains(out, "Subject: op") || strings.Contains(out, "secret-sender") || !strings.Contains(out, "hidden header fields") {
		t.Fatalf("queue show without --addresses: %v\n%s", err, out)
	}
	out, err = mixmta(t, "queue", "show", "--addresses", id, "-c", cfg)
	if err != nil || !strings.Contains(out, "From: Secret Sender <secret-sender@example.org>") || !strings.Contains(out, "mail_from: <secret-sender@example.org>") {
		t.Fatalf("queue show --addresses: %v\n%s", err, out)
	}

	if out, err := mixmta(t, "queue", "hold", id, "-c", cfg); err != nil || !strings.Contains(out, "held "+id) {
		t.Fatalf("queue hold: %v\n%s", err, out)
	}
	if row := lsRow(t, cfg, id); !strings.Contains(row, " held ") || !strings.Contains(row, "held by the operator") {
		t.Fatalf("held item's row: %s", row)
	}
	if out, err := mixmta(t, "queue", "release", other, "-c", cfg); err == nil {
		t.Fatalf("release of an item that is not held succeeded:\n%s", out)
	}
	if out, err := mixmta(t, "queue", "release", id, "-c", cfg); err != nil || !strings.Contains(out, "released "+id) {
		t.Fatalf("queue release: %v\n%s", err, out)
	}
	if row := lsRow(t, cfg, id); strings.Contains(row, " held ") {
		t.Fatalf("released item still held: %s", row)
	}

	// The relay host comes up; the pool keeps 10 items, so nothing leaves
	// by itself: requeue makes an item due, flush forces both out.
	sink := peers.SmtpSink(t)
	n.stop()
	if err := os.WriteFile(cfg, []byte(strings.Replace(operateConfig(addr, sink.Addr, 10), "hostname:", "data_dir: "+data+"\nplugin_dir: "+binDir+"\nhostname:", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	if out, err := mixmta(t, "queue", "requeue", id, "-c", cfg); err != nil || !strings.Contains(out, "requeued "+id) {
		t.Fatalf("queue requeue: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "the requeued item in the pool", func() bool {
		row := lsRow(t, cfg, id)
		return strings.Contains(row, " pooled ") && regexp.MustCompile(`\s0\s+\d+\s+1\s+-$`).MatchString(strings.TrimSpace(row))
	})
	time.Sleep(500 * time.Millisecond)
	if sink.Count() != 0 {
		t.Fatalf("an item left a pool that keeps 10: sink has %d", sink.Count())
	}
	if out, err := mixmta(t, "queue", "flush", "-c", cfg); err != nil || !strings.Contains(out, "2 items flushed") {
		t.Fatalf("queue flush: %v\n%s", err, out)
	}
	if !sink.WaitCount(2, 20*time.Second) {
		t.Fatalf("flushed items not delivered: sink has %d", sink.Count())
	}
	sentLine := regexp.MustCompile(`\[DELIVER\] sent: id=[0-9a-f]{32} msg=[0-9a-f]{32} stage=deliver status=sent reply="250 2\.0\.0 ok" relay=` + regexp.QuoteMeta(sink.Addr) + ` rcpts=1 delay=[0-9.]+ delays=[0-9.]+/[0-9.]+/[0-9.]+`)
	waitFor(t, 10*time.Second, "2 [DELIVER] sent lines", func() bool { return len(sentLine.FindAllString(n.log(), -1)) == 2 })
	for _, l := range sentLine.FindAllString(n.log(), -1) {
		// flushed an hour early: it waited in the queue seconds, not 3600
		if !regexp.MustCompile(`delays=\d{1,2}\.\d\d/`).MatchString(l) {
			t.Fatalf("delays of a flushed item: %s", l)
		}
	}

	for i := 0; i < 3; i++ {
		if err := sendRaw(addr, "a@example.org", []string{"b@example.net"}, []byte("Subject: x\r\n\r\nx\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "3 pooled items", func() bool { return len(queueLs(t, cfg)) == 3 })
	if out, err := mixmta(t, "queue", "delete", "ALL", "-c", cfg); err != nil || !strings.Contains(out, "3 items deleted") {
		t.Fatalf("queue delete ALL: %v\n%s", err, out)
	}
	if items := queueLs(t, cfg); len(items) != 0 {
		t.Fatalf("queue not empty after delete ALL: %v", items)
	}
	mixmta(t, "queue", "flush", "-c", cfg)
	time.Sleep(500 * time.Millisecond)
	if sink.Count() != 2 {
		t.Fatalf("a deleted item was delivered: sink has %d", sink.Count())
	}
}

// TestVersionCommand: `mixmta version` names the version and the Go
// toolchain.
func TestVersionCommand(t *testing.T) {
	out, err := mixmta(t, "version")
	if err != nil || !regexp.MustCompile(`^mixmta \S+ \(go1\.\d+\S* linux/\w+, revision \S+\)\n$`).MatchString(out) {
		t.Fatalf("mixmta version: %v\n%q", err, out)
	}
}

// TestMetricsHaveBuildInfoLatencyAndProcess: /metrics carries
// mixmta_build_info, the delivery latency histogram (one observation per
// delivered message), the quarantine and disk-full counters and the Go and
// process collectors.
func TestMetricsHaveBuildInfoLatencyAndProcess(t *testing.T) {
	sink := peers.SmtpSink(t)
	addr, metrics := freeAddr(t), freeAddr(t)
	cfg, data := profile(t, operateConfig(addr, sink.Addr, 0), map[string]any{"metrics.address": metrics})
	startNode(t, cfg, data, addr)
	for i := 0; i < 3; i++ {
		if err := sendRaw(addr, "a@example.org", []string{"b@example.net"}, []byte("Subject: m\r\n\r\nm\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	if !sink.WaitCount(3, 20*time.Second) {
		t.Fatalf("sink has %d, want 3", sink.Count())
	}
	// The sink has a message a moment before the engine records its
	// delivery: wait for the histogram to count all three.
	var b []byte
	waitFor(t, 10*time.Second, "3 deliveries in the latency histogram", func() bool {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return false
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(b), "mixmta_delivery_latency_seconds_count 3")
	})
	for _, want := range []string{
		`mixmta_build_info{goversion="go`,
		`mixmta_delivery_latency_seconds_count 3`,
		`mixmta_delivery_latency_seconds_bucket{le="3600"} 3`,
		`mixmta_items_quarantined_total 0`,
		`mixmta_smtp_disk_full_total 0`,
		`mixmta_sphinx_packets_total 0`,
		`process_resident_memory_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestSIGTERMToProcessGroupStopsCleanly: SIGTERM to the whole process
// group (what systemd and a shell's ctrl-C do: the plugins get it too)
// stops the daemon cleanly ("stopped", no ERROR line), and no plugin
// outlives it.
func TestSIGTERMToProcessGroupStopsCleanly(t *testing.T) {
	sink := peers.SmtpSink(t)
	n := fastRelay(t, sink.Addr)
	b := &blaster{addr: n.addr, size: 1024}
	done := make(chan struct{})
	go func() { b.run(4, 200); close(done) }()
	for b.sent.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	pid := n.pid()
	kids := children(pid)
	if len(kids) < 3 {
		t.Fatalf("want 3 plugin processes, found %d", len(kids))
	}
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !waitGone(pid, 30*time.Second) {
		t.Fatal("mixmta still runs 30 s after SIGTERM to its process group")
	}
	<-done
	log := n.log()
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "[ERROR]") {
			t.Errorf("ERROR line at shutdown: %s", l)
		}
	}
	if !strings.Contains(log, "mixmta: stopped") {
		t.Errorf("no clean stop in the log:\n%s", tailLines(log, 20))
	}
	for _, k := range kids {
		if !waitGone(k, 5*time.Second) {
			t.Errorf("plugin %d outlived the core", k)
		}
	}
}

// TestMisspelledPluginSuggestsTheClosest: a plugin name that is not in
// plugin_dir is reported with the nearest name that is.
func TestMisspelledPluginSuggestsTheClosest(t *testing.T) {
	cfg, _ := profile(t, `
listeners:
  - {name: a, address: "127.0.0.1:0"}
pipeline:
  - name: deliver
    plugin: onoinmx
    config: {relay_host: "127.0.0.1:25"}
`, nil)
	out, err := mixmta(t, "check-config", "-c", cfg)
	if err == nil || !regexp.MustCompile(regexp.QuoteMeta(cfg)+`:\d+: stage "deliver": plugin "onoinmx" not found in `).MatchString(out) || !strings.Contains(out, `did you mean "onionmx"?`) {
		t.Fatalf("check-config with a misspelled plugin: %v\n%s", err, out)
	}
}

// TestMissingNodesFileSaysHowToCreateIt: a mix node whose nodes file does
// not exist fails check-config and serve with FILE:LINE of
// mix.nodes_file and the commands that create it.
func TestMissingNodesFileSaysHowToCreateIt(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nodes.json")
	cfg, _ := profile(t, "configs/fog.yaml", map[string]any{"mix.nodes_file": missing, "listeners.0.address": freeAddr(t), "mix.address": freeAddr(t)})
	if out, err := mixmta(t, "keygen", "-c", cfg); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(cfg)
	line := 0
	for i, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "nodes_file:") {
			line = i + 1
		}
	}
	for _, cmd := range []string{"check-config", "serve"} {
		out, err := mixmta(t, cmd, "-c", cfg)
		want := fmt.Sprintf("%s:%d: mix.nodes_file: %s does not exist", cfg, line, missing)
		if err == nil || !strings.Contains(out, want) || !strings.Contains(out, "mixmta node export -c "+cfg) || !strings.Contains(out, "mixmta nodes add -c "+cfg) {
			t.Fatalf("%s with a missing nodes file: %v\nwant %q and the commands\n%s", cmd, err, want, out)
		}
	}
}

// TestConfigShowPrintsEffectiveConfig: `mixmta config show` prints every
// default (like postconf), `-n` only what the file sets (like postconf -n).
func TestConfigShowPrintsEffectiveConfig(t *testing.T) {
	cfg, _ := profile(t, "configs/relay.yaml", nil)
	all, err := mixmta(t, "config", "show", "-c", cfg)
	if err != nil || !strings.Contains(all, "free_space_reserve: 268435456") || !strings.Contains(all, "max_sessions: 100") || !strings.Contains(all, "window: 30s") {
		t.Fatalf("config show: %v\n%s", err, all)
	}
	set, err := mixmta(t, "config", "show", "-n", "-c", cfg)
	if err != nil || strings.Contains(set, "free_space_reserve") || strings.Contains(set, "max_sessions") || !strings.Contains(set, "window: 30s") || !strings.Contains(set, "mean: 10m") {
		t.Fatalf("config show -n: %v\n%s", err, set)
	}
}
