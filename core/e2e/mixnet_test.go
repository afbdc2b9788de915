package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
)

// mixnet is a local mixnet of real `mixmta serve` processes made by
// `mixmta mixnet init` from configs/local-mixnet.yaml.
type mixnet struct {
	dir   string
	nodes []*node
	smtp  []string
}

// startMixnet makes and starts n nodes whose exits deliver to relayHost
// with onionmx; patches apply to every node's config.
func startMixnet(t testing.TB, n int, relayHost string, patches map[string]any) *mixnet {
	t.Helper()
	return startProfileMixnet(t, "configs/local-mixnet.yaml", n, relayHost, patches)
}

// startProfileMixnet is startMixnet with another profile (a path relative
// to the repository root).
func startProfileMixnet(t testing.TB, profileName string, n int, relayHost string, patches map[string]any) *mixnet {
	t.Helper()
	dir := t.TempDir()
	smtpPort, mixPort := freeRange(t, n), freeRange(t, n)
	cfgs := initMixnet(t, dir, profileName, mixnetSettings(relayHost, patches),
		"--nodes", strconv.Itoa(n), "--smtp-port", strconv.Itoa(smtpPort), "--mix-port", strconv.Itoa(mixPort))
	m := &mixnet{dir: dir}
	for i, cfg := range cfgs {
		addr := fmt.Sprintf("127.0.0.1:%d", smtpPort+i)
		m.smtp = append(m.smtp, addr)
		m.nodes = append(m.nodes, startNode(t, cfg, filepath.Join(filepath.Dir(cfg), "data"), addr))
	}
	return m
}

// mixnetSettings are the profile settings of the test mixnets: plugins
// from the test build, delivery by onionmx to relayHost, short delays and
// probes; patches are added over them.
func mixnetSettings(relayHost string, patches map[string]any) map[string]any {
	all := map[string]any{
		"plugin_dir":              binDir,
		"log.stats_interval":      "1s",
		"pipeline.deliver.plugin": "onionmx",
		"pipeline.deliver.config": map[string]any{"relay_host": relayHost, "tls": "none"},
		"pipeline.delay.config":   map[string]any{"mean": "50ms", "max": "500ms"},
		"mix.hop_delay.config":    map[string]any{"mean": "50ms", "max": "500ms"},
		"mix.probe_interval":      "1s",
	}
	for k, v := range patches {
		all[k] = v
	}
	return all
}

// initMixnet patches the profile profileName (relative to the repository
// root) with settings, runs `mixmta mixnet init --dir dir` with it and
// args, and returns the nodes' config paths, each node logging its frames
// to frames.log beside its config.
func initMixnet(t testing.TB, dir, profileName string, settings map[string]any, args ...string) []string {
	t.Helper()
	profile, err := os.ReadFile(filepath.Join(repoRoot, profileName))
	if err != nil {
		t.Fatal(err)
	}
	out, err := config.Patch(profile, settings)
	if err != nil {
		t.Fatal(err)
	}
	prof := filepath.Join(dir, "profile.yaml")
	if err := os.WriteFile(prof, out, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := mixmtaCommand(t, append([]string{"mixnet", "init", "--dir", dir, "--profile", prof}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mixnet init: %v\n%s", err, b)
	}
	var cfgs []string
	for i := 1; ; i++ {
		cfg := filepath.Join(dir, fmt.Sprintf("node%d", i), "mixmta.yaml")
		b, err := os.ReadFile(cfg)
		if err != nil {
			break
		}
		if b, err = config.Patch(b, map[string]any{"mix.frame_log": filepath.Join(filepath.Dir(cfg), "frames.log")}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfgs = append(cfgs, cfg)
	}
	if len(cfgs) == 0 {
		t.Fatalf("mixnet init made no node in %s", dir)
	}
	return cfgs
}

// freeRange returns the first of n consecutive free ports on 127.0.0.1
// (mixnet init numbers nodes' ports from a base). It draws bases below the
// kernel's ephemeral range, where client connections of other tests take
// their ports, and checks each port by binding it.
func freeRange(t testing.TB, n int) int {
	t.Helper()
	for try := 0; try < 200; try++ {
		base := 20000 + mrand.IntN(12000)
		ok := true
		for p := base; p < base+n && ok; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// waitHealthy waits until every node sees all other nodes healthy.
func (m *mixnet) waitHealthy(t testing.TB) {
	t.Helper()
	want := fmt.Sprintf("healthy_nodes=%d", len(m.nodes)-1)
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range m.nodes {
		for !strings.Contains(lastStats(n.log()), want) {
			if time.Now().After(deadline) {
				t.Fatalf("node not healthy: %s", lastStats(n.log()))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func lastStats(log string) string {
	i := strings.LastIndex(log, "[STATS]")
	if i < 0 {
		return ""
	}
	line := log[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return line
}

func statValue(line, key string) int {
	m := regexp.MustCompile(`\b` + key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// frameSizes reads every node's frame log: sizes seen per direction.
func (m *mixnet) frameSizes(t testing.TB) map[string]map[int]int {
	t.Helper()
	out := map[string]map[int]int{}
	for i := range m.nodes {
		f, err := os.Open(filepath.Join(m.dir, fmt.Sprintf("node%d", i+1), "frames.log"))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 {
				continue
			}
			size, err := strconv.Atoi(fs[len(fs)-1])
			if err != nil {
				continue
			}
			dir := fs[0]
			if out[dir] == nil {
				out[dir] = map[int]int{}
			}
			out[dir][size]++
		}
		f.Close()
	}
	return out
}

// TestMixnetCarriesMessagesOfEverySize: a 5-node mixnet of real processes
// carries messages of 1 KiB, 60 KiB, 200 KiB and 2 MiB (fragmented) from
// one node's SMTP to a temp-dir Postfix behind the exits: bodies
// byte-identical, headers sanitized; every frame on every link the same
// size; no node logs a sender, recipient or subject; cover traffic never
// reaches the MTA.
func TestMixnetCarriesMessagesOfEverySize(t *testing.T) {
	pf := peers.Postfix(t)
	m := startMixnet(t, 5, pf.Addr, nil)
	m.waitHealthy(t)

	sizes := []int{1 << 10, 60 << 10, 200 << 10, 2 << 20}
	sendEverySize(t, m, pf, "mix", sizes, 120*time.Second)
	// Cover packets run all along; none may reach the MTA.
	time.Sleep(3 * time.Second)
	if got := len(pf.Messages()); got != len(sizes) {
		t.Fatalf("Postfix has %d messages after cover traffic, want %d", got, len(sizes))
	}

	checkFramesAndLogs(t, m, "mix0@")
	if assembled := waitAssembled(m, len(sizes)); assembled != len(sizes) {
		t.Errorf("exits assembled %d messages, want %d", assembled, len(sizes))
	}
	if statValue(lastStats(m.nodes[0].log()), "assembled") > 0 {
		t.Errorf("the entry node was an exit for its own messages")
	}
}

// sendEverySize sends one message of each size (a token, then 70-byte
// lines) from envsender<i>@example.org to <prefix><i>@example.net through
// the mixnet's first node, with tracing headers (From, Subject, X-Trace)
// the sanitizer must remove, and checks that pf gets each within timeout:
// sanitized, the body byte-identical, the envelope sender the exit's <>.
func sendEverySize(t *testing.T, m *mixnet, pf *peers.PostfixPeer, prefix string, sizes []int, timeout time.Duration) {
	t.Helper()
	want := map[string][]byte{}
	for i, size := range sizes {
		rcpt := fmt.Sprintf("%s%d@example.net", prefix, i)
		tok := token()
		var body bytes.Buffer
		fmt.Fprintf(&body, "token %s\r\n", tok)
		line := strings.Repeat("abcdefghij", 7) + "\r\n"
		for body.Len() < size {
			body.WriteString(line)
		}
		msg := fmt.Sprintf("From: LEAK-FROM%d <sender%d@example.org>\r\nTo: %s\r\nSubject: secret-subject-%s\r\nX-Trace: LEAK-X%d\r\n\r\n", i, i, rcpt, tok, i)
		if err := sendRaw(m.smtp[0], fmt.Sprintf("envsender%d@example.org", i), []string{rcpt}, append([]byte(msg), body.Bytes()...), false); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		want[rcpt] = bytes.ReplaceAll(body.Bytes(), []byte("\r\n"), []byte("\n"))
	}
	files := pf.WaitMessages(t, len(sizes), timeout)
	if len(files) != len(sizes) {
		t.Fatalf("Postfix got %d messages, want %d", len(files), len(sizes))
	}
	for _, f := range files {
		d := parseDelivered(t, f)
		checkSanitized(t, d)
		rcpt := strings.Trim(strings.TrimSpace(strings.Join(d.header["delivered-to"], "")), "<>")
		if !bytes.Equal(d.body, want[rcpt]) {
			t.Errorf("%s: body of %d bytes differs from the %d sent", rcpt, len(d.body), len(want[rcpt]))
		}
		if rp := strings.TrimSpace(strings.Join(d.header["return-path"], "")); rp != "<>" {
			t.Errorf("%s: envelope sender %q, want the exit's <>", rcpt, rp)
		}
	}
}

// checkFramesAndLogs checks that every frame on every link had one size
// and that no node's log holds a sender, a recipient (rcpt is one sent
// by sendEverySize), a subject or a LEAK- marker.
func checkFramesAndLogs(t *testing.T, m *mixnet, rcpt string) {
	t.Helper()
	frames := m.frameSizes(t)
	for dir, bySize := range frames {
		if len(bySize) != 1 {
			t.Errorf("frames %s have %d different sizes: %v", dir, len(bySize), bySize)
		}
	}
	if len(frames["out"]) == 0 {
		t.Fatalf("no frames logged: %v", frames)
	}
	t.Logf("frame sizes: %v", frames)
	for i, n := range m.nodes {
		log := n.log()
		for _, s := range []string{"sender", "envsender", rcpt, "example.net", "secret-subject", "LEAK-"} {
			if strings.Contains(log, s) {
				t.Errorf("node%d's log contains %q", i+1, s)
			}
		}
	}
}

// waitAssembled sums the nodes' last "assembled" [STATS] counts until
// they reach want or 20 s pass (the line comes every stats interval, so
// the one counting the last assembly may still be due) and returns it.
func waitAssembled(m *mixnet, want int) int {
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		assembled := 0
		for _, n := range m.nodes {
			if v := statValue(lastStats(n.log()), "assembled"); v > 0 {
				assembled += v
			}
		}
		if assembled >= want || time.Now().After(deadline) {
			return assembled
		}
	}
}

// TestCoverTrafficAtConfiguredRate: drop and loop packets leave every node
// at the configured Poisson rates (counts within 4 standard deviations),
// loops come back, drops are discarded at their last hop, and none reaches
// the delivery MTA.
func TestCoverTrafficAtConfiguredRate(t *testing.T) {
	sink := peers.SmtpSink(t)
	const drop, loop = 4.0, 2.0 // packets per second per node
	m := startMixnet(t, 4, sink.Addr, map[string]any{
		"mix.cover": map[string]any{"drop_rate": drop, "loop_rate": loop},
	})
	m.waitHealthy(t)
	start := map[int][2]int{}
	for i, n := range m.nodes {
		st := lastStats(n.log())
		start[i] = [2]int{statValue(st, "cover_sent"), statValue(st, "cover_dropped")}
	}
	t0 := time.Now()
	time.Sleep(12 * time.Second)
	el := time.Since(t0).Seconds()
	totalDropped := 0
	for i, n := range m.nodes {
		st := lastStats(n.log())
		sent := statValue(st, "cover_sent") - start[i][0]
		totalDropped += statValue(st, "cover_dropped") - start[i][1]
		// The [STATS] line is written once a second: allow one second of slack.
		mean := (drop + loop) * el
		sd := math.Sqrt(mean)
		lo, hi := mean-4*sd-(drop+loop), mean+4*sd+(drop+loop)
		if float64(sent) < lo || float64(sent) > hi {
			t.Errorf("node%d sent %d cover packets in %.1fs, want %.0f (in [%.0f, %.0f])", i+1, sent, el, mean, lo, hi)
		}
		loops := regexp.MustCompile(`loops=(\d+)/(\d+)/(\d+)`).FindStringSubmatch(st)
		if loops == nil || loops[2] == "0" {
			t.Errorf("node%d: no loop came back: %s", i+1, st)
		}
	}
	// drops sent by all nodes end at some node's last hop
	wantDrops := drop * el * float64(len(m.nodes))
	if float64(totalDropped) < wantDrops-4*math.Sqrt(wantDrops)-2*drop*float64(len(m.nodes)) {
		t.Errorf("%d drop packets discarded at last hops, want about %.0f", totalDropped, wantDrops)
	}
	if sink.Count() != 0 {
		t.Fatalf("cover traffic reached the delivery MTA: %d messages", sink.Count())
	}
	// The cover packets are on the links: with no real traffic, every frame
	// is cover, and each cover packet crosses 3 links (in flight aside).
	totalSent := 0
	for _, n := range m.nodes {
		totalSent += statValue(lastStats(n.log()), "cover_sent")
	}
	frames := 0
	for _, c := range m.frameSizes(t)["out"] {
		frames += c
	}
	if frames < 2*totalSent {
		t.Fatalf("%d frames on the links for %d cover packets sent, want about 3 per packet", frames, totalSent)
	}
	t.Logf("%d cover packets, %d frames on the links", totalSent, frames)
}

// queueItems lists a node's queue through `mixmta queue ls --json`.
func queueItems(t *testing.T, cfg string) []map[string]any {
	t.Helper()
	out, err := mixmta(t, "queue", "ls", "--json", "-c", cfg)
	if err != nil {
		t.Fatalf("queue ls: %v\n%s", err, out)
	}
	var items []map[string]any
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("queue ls: %v\n%s", err, out)
	}
	return items
}

// TestKill9MiddleNodeKeepsPacketsInItsPool: packets waiting in a middle
// node's pool survive kill -9 of that node; after a restart they are
// delivered.
func TestKill9MiddleNodeKeepsPacketsInItsPool(t *testing.T) {
	pf := peers.Postfix(t)
	m := startMixnet(t, 5, pf.Addr, map[string]any{
		"mix.hop_delay.config": map[string]any{"mean": "4s", "min": "3s", "max": "8s"},
	})
	m.waitHealthy(t)
	const msgs = 6
	for i := 0; i < msgs; i++ {
		if err := sendRaw(m.smtp[0], "a@example.org", []string{fmt.Sprintf("k%d@example.net", i)}, []byte("Subject: k\r\n\r\nsurvive\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	// Find a node other than the entry holding packets bound elsewhere.
	victim := -1
	deadline := time.Now().Add(20 * time.Second)
	for victim < 0 && time.Now().Before(deadline) {
		for i := 1; i < len(m.nodes); i++ {
			for _, it := range queueItems(t, m.nodes[i].cfgPath) {
				if it["kind"] == "packet-out" {
					victim = i
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if victim < 0 {
		t.Fatal("no middle node ever held a packet in its pool")
	}
	held := 0
	for _, it := range queueItems(t, m.nodes[victim].cfgPath) {
		if it["kind"] == "packet-out" {
			held++
		}
	}
	kids := m.nodes[victim].kill9()
	for _, k := range kids {
		if !waitGone(k, 5*time.Second) {
			t.Errorf("plugin %d outlived the killed node", k)
		}
	}
	// Its packets are still in its queue on disk.
	left := 0
	out, _ := mixmta(t, "queue", "ls", "--json", "-c", m.nodes[victim].cfgPath)
	var items []map[string]any
	json.Unmarshal([]byte(out), &items)
	for _, it := range items {
		if it["kind"] == "packet-out" || it["kind"] == "packet-in" {
			left++
		}
	}
	if left == 0 {
		t.Fatalf("node%d held %d packets before kill -9 and none after", victim+1, held)
	}
	t.Logf("node%d killed with %d packets in its pool (%d on disk after)", victim+1, held, left)
	m.nodes[victim].start()
	files := pf.WaitMessages(t, msgs, 120*time.Second)
	if len(files) != msgs {
		t.Fatalf("%d of %d messages delivered after the restart", len(files), msgs)
	}
}

// TestPathsAvoidANodeThatIsDown: once the health probes notice a node is
// down, new messages take paths around it and all arrive without any send
// to it.
func TestPathsAvoidANodeThatIsDown(t *testing.T) {
	pf := peers.Postfix(t)
	m := startMixnet(t, 5, pf.Addr, nil)
	m.waitHealthy(t)
	down := m.nodes[4]
	down.stop()
	// wait until the others' [STATS] say 3 healthy nodes
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range m.nodes[:4] {
		for !strings.Contains(lastStats(n.log()), "healthy_nodes=3") {
			if time.Now().After(deadline) {
				t.Fatalf("node down not noticed: %s", lastStats(n.log()))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Packets built before the change (cover, forwards) may still be in
	// pools and hop delays (max 500 ms): let them drain first.
	time.Sleep(3 * time.Second)
	// A first attempt that fails is a new packet sent to the down node;
	// retries of packets built before the change do not count.
	firstTries := regexp.MustCompile(`send failed.*attempt=1\b`)
	before := 0
	for _, n := range m.nodes[:4] {
		before += len(firstTries.FindAllString(n.log(), -1))
	}
	const msgs = 8
	for i := 0; i < msgs; i++ {
		if err := sendRaw(m.smtp[i%4], "a@example.org", []string{fmt.Sprintf("d%d@example.net", i)}, []byte("Subject: d\r\n\r\naround\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	files := pf.WaitMessages(t, msgs, 60*time.Second)
	if len(files) != msgs {
		t.Fatalf("%d of %d messages delivered with node5 down", len(files), msgs)
	}
	after := 0
	for _, n := range m.nodes[:4] {
		after += len(firstTries.FindAllString(n.log(), -1))
	}
	if after != before {
		t.Fatalf("%d sends to the down node after its failure was noticed", after-before)
	}
}
