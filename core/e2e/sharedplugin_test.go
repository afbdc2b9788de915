package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// pluginProcs maps each plugin binary's name to the pids of the core's
// plugin processes running it.
func pluginProcs(core int) map[string][]int {
	out := map[string][]int{}
	for _, k := range children(core) {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", k))
		if err == nil {
			out[filepath.Base(exe)] = append(out[filepath.Base(exe)], k)
		}
	}
	return out
}

// TestMixNodeMemoryCountsOneProcessPerPluginBinary: a mix node of
// configs/local-mixnet.yaml (7 stages: sanitize twice, delay-exponential
// three times with the hop delay, sphinx, the deliverer) runs one plugin
// process per binary, and the memory benchmark's measure counts exactly
// those processes besides the core.
func TestMixNodeMemoryCountsOneProcessPerPluginBinary(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startMixnet(t, 2, sink.Addr, nil)
	core := m.nodes[0].pid()
	want := []string{"delay-exponential", "onionmx", "sanitize", "sphinx"}
	var procs map[string][]int
	deadline := time.Now().Add(20 * time.Second)
	for {
		procs = pluginProcs(core)
		if len(procs) == len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range want {
		if len(procs[name]) != 1 {
			t.Errorf("%s: %d processes %v, want 1 serving all its stages", name, len(procs[name]), procs[name])
		}
	}
	if len(procs) != len(want) {
		t.Errorf("plugin processes by binary: %v, want one each of %v", procs, want)
	}
	nm := measureNode(core)
	if nm.plugins != len(want) || nm.binaries != len(want) {
		t.Errorf("memory measure counted %d plugin processes of %d binaries, want %d of %d", nm.plugins, nm.binaries, len(want), len(want))
	}
	if nm.coreRSS == 0 || nm.pluginsRSS == 0 || nm.pluginBin == 0 {
		t.Errorf("memory measure: core %d KiB, plugins %d KiB, plugin binaries %d KiB: want each counted", nm.coreRSS, nm.pluginsRSS, nm.pluginBin)
	}
}

// TestKill9SharedPluginProcessLosesNothing: the relay profile with a second
// delay stage, so one delay-exponential process serves two stages; kill -9
// of that process mid-load: every acknowledged message is delivered (each
// crossed both stages, so both came back), and one process serves them
// again.
func TestKill9SharedPluginProcessLosesNothing(t *testing.T) {
	sink := peers.SmtpSink(t)
	text, err := os.ReadFile(filepath.Join(repoRoot, "configs/relay.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const second = "  - name: delay2\n    plugin: delay-exponential\n    config: {mean: 2ms, max: 20ms}\n"
	src := strings.Replace(string(text), "  - name: deliver\n", second+"  - name: deliver\n", 1)
	if src == string(text) {
		t.Fatal("relay.yaml has no deliver stage to insert before")
	}
	addr := freeAddr(t)
	cfg, data := profile(t, src, map[string]any{
		"listeners.0.address":                addr,
		"listeners.0.max_sessions":           200,
		"scheduler.window":                   "50ms",
		"pipeline.delay.config.mean":         "1ms",
		"pipeline.delay.config.min":          "0s",
		"pipeline.delay.config.max":          "10ms",
		"pipeline.deliver.config.relay_host": sink.Addr,
		"log.stats_interval":                 "2s",
	})
	n := startNode(t, cfg, data, addr)
	delays := pluginProcs(n.pid())["delay-exponential"]
	if len(delays) != 1 {
		t.Fatalf("delay-exponential processes %v, want one serving both delay stages", delays)
	}
	b := &blaster{addr: n.addr, size: 1024}
	done := make(chan struct{})
	go func() { b.run(10, 2000); close(done) }()
	for b.sent.Load() < 500 {
		time.Sleep(10 * time.Millisecond)
	}
	syscall.Kill(delays[0], syscall.SIGKILL)
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
	if now := pluginProcs(n.pid())["delay-exponential"]; len(now) != 1 || now[0] == delays[0] {
		t.Errorf("delay-exponential processes after the kill: %v (killed %d), want one new one", now, delays[0])
	}
}
