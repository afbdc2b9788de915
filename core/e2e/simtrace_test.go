package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/simulate"
)

// TestSimulatorAgreesWithARealMixnet validates the simulator against the
// real system: a 5-node local mixnet of real processes carries a Poisson
// workload of 20 users while every node logs its frames with their times;
// the same adversary analyses that recording and a simulated trace of the
// same profile and workload, and the mean sender entropies must agree
// within 10%. As negative controls, a simulation of the profile with
// every delay 10x shorter (analysed with that profile's model), and one
// without the sending schedule and cover traffic, must each miss by more
// than 10%.
func TestSimulatorAgreesWithARealMixnet(t *testing.T) {
	const (
		nodes, usersPerNode = 5, 4
		rate                = 0.08 // messages per user per second
		warm, submitFor     = 15 * time.Second, 60 * time.Second
		drain               = 20 * time.Second
		msgMean, hopMean    = 2.0, 1.0 // seconds
		exitMean            = 1.0
		window              = 0.2
		dropRate, loopRate  = 0.4, 0.2
	)
	m := startMixnet(t, nodes, "127.0.0.1:9", map[string]any{
		"pipeline.delay.config":   map[string]any{"mean": "2s", "max": "20s"},
		"mix.hop_delay.config":    map[string]any{"mean": "1s", "max": "10s"},
		"scheduler.window":        "200ms",
		"mix.cover.drop_rate":     dropRate,
		"mix.cover.loop_rate":     loopRate,
		"log.stats_interval":      "5s",
		"pipeline.deliver.plugin": "maildir",
		"pipeline.deliver.config": map[string]any{"path": filepath.Join(t.TempDir(), "unused"), "layout": "recipient"},
	})
	// Each exit delivers into a Maildir of its own, so a delivery names
	// its exit (an observer sees which exit hands mail to the MTA).
	ids := make([]string, nodes)
	var nf struct {
		Nodes []struct{ Name, ID string } `json:"nodes"`
	}
	b, err := os.ReadFile(filepath.Join(m.dir, "nodes.json"))
	if err != nil || json.Unmarshal(b, &nf) != nil || len(nf.Nodes) != nodes {
		t.Fatalf("nodes.json: %v (%d nodes)", err, len(nf.Nodes))
	}
	byName := map[string]string{}
	for _, d := range nf.Nodes {
		byName[d.Name] = d.ID
	}
	maildirs := make([]string, nodes)
	logs := make([]string, nodes)
	for i, n := range m.nodes {
		n.stop()
		dir := filepath.Dir(n.cfgPath)
		maildirs[i] = filepath.Join(dir, "maildir")
		logs[i] = filepath.Join(dir, "frames.log")
		os.Remove(logs[i])
		cb, _ := os.ReadFile(n.cfgPath)
		cfg, err := config.Load(n.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = byName[cfg.Mix.Name]
		cb, err = config.Patch(cb, map[string]any{"pipeline.deliver.config": map[string]any{"path": maildirs[i], "layout": "recipient"}})
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(n.cfgPath, cb, 0o600)
	}
	for _, n := range m.nodes {
		n.start()
	}
	m.waitHealthy(t)

	// The workload: Poisson submissions, each message marked with a token
	// that names it.
	start := time.Now()
	var (
		mu   sync.Mutex
		subs []simulate.Submission
		toks = map[string]int{}
		wg   sync.WaitGroup
	)
	for u := range nodes * usersPerNode {
		wg.Add(1)
		go func(u int) {
			defer wg.Done()
			node := u / usersPerNode
			r := mrand.New(mrand.NewPCG(uint64(u), 9))
			for next := start; ; {
				next = next.Add(time.Duration(r.ExpFloat64() / rate * float64(time.Second)))
				if next.Sub(start) > warm+submitFor {
					return
				}
				time.Sleep(time.Until(next))
				tok := fmt.Sprintf("simtok-%02d-%016x", u, r.Uint64())
				at := time.Now()
				msg := []byte("Subject: sim\r\nTo: sink@example.net\r\n\r\n" + tok + "\r\n")
				if err := sendRaw(m.smtp[node], "user@example.org", []string{"sink@example.net"}, msg, false); err != nil {
					t.Errorf("user %d: %v", u, err)
					return
				}
				mu.Lock()
				toks[tok] = len(subs)
				subs = append(subs, simulate.Submission{T: at, User: u, Node: node})
				mu.Unlock()
			}
		}(u)
	}
	wg.Wait()
	time.Sleep(drain)
	for _, n := range m.nodes {
		n.stop()
	}

	var dels []simulate.Delivery
	re := regexp.MustCompile(`simtok-\d{2}-[0-9a-f]{16}`)
	for i, md := range maildirs {
		files, _ := filepath.Glob(filepath.Join(md, "*", "*", "new", "*"))
		for _, f := range files {
			body, err := os.ReadFile(f)
			fi, err2 := os.Stat(f)
			if err != nil || err2 != nil {
				t.Fatal(err, err2)
			}
			tok := re.FindString(string(body))
			msg, ok := toks[tok]
			if !ok {
				t.Fatalf("%s holds no known token", f)
			}
			dels = append(dels, simulate.Delivery{T: fi.ModTime(), Node: i, Msg: msg})
		}
	}
	if len(dels) < len(subs)*9/10 {
		t.Fatalf("only %d of %d messages delivered", len(dels), len(subs))
	}
	real, err := simulate.FromRecording(simulate.Recording{
		NodeIDs: ids, FrameLogs: logs, Users: nodes * usersPerNode,
		Submissions: subs, Deliveries: dels, Warmup: warm,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Each trace is analysed with the model an adversary derives from the
	// profile alone.
	model := func(delayScale float64) simulate.Model {
		return simulate.ModelFor(nodes, delayScale*msgMean, delayScale*hopMean, delayScale*exitMean, window, dropRate+loopRate)
	}
	realSum := simulate.Summarize("real", 0, real.Users, simulate.Analyze(real, model(1), nil))

	cfg, err := config.Load(m.nodes[0].cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	simulated := func(delayScale float64, old bool) simulate.Summary {
		prof, err := simulate.LoadProfile(context.Background(), cfg, delayScale, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer prof.Close()
		net := prof.Network
		net.Nodes, net.Exits = nodes, nodes
		m := model(delayScale)
		if old {
			// A mixnet without the sending schedule and without cover.
			net.SendRate, net.DropRate, net.LoopRate = 0, 0, 0
			m = simulate.ModelFor(nodes, msgMean, hopMean, exitMean, window, 0)
		}
		var rs []simulate.Result
		for seed := range uint64(4) {
			tr, _, err := simulate.Run(net, simulate.Workload{
				UsersPerNode: usersPerNode, Rate: rate, Size: func(*mrand.Rand) int { return 200 },
				Duration: (warm + submitFor + drain).Seconds(), Until: (warm + submitFor).Seconds(), Warmup: warm.Seconds(), Seed: seed,
			})
			if err != nil {
				t.Fatal(err)
			}
			rs = append(rs, simulate.Analyze(tr, m, nil)...)
		}
		return simulate.Summarize("simulated", 0, nodes*usersPerNode, rs)
	}
	simSum := simulated(1, false)
	t.Logf("real mixnet: %.3f bits mean over %d messages (p50 %.2f, %.1f%% traced); simulated: %.3f bits over %d (p50 %.2f, %.1f%% traced)",
		realSum.EntropyMean, realSum.Messages, realSum.EntropyP50, 100*realSum.PTraced, simSum.EntropyMean, simSum.Messages, simSum.EntropyP50, 100*simSum.PTraced)
	if realSum.Messages < 50 {
		t.Fatalf("only %d messages scored in the real trace", realSum.Messages)
	}
	if d := math.Abs(realSum.EntropyMean-simSum.EntropyMean) / simSum.EntropyMean; d > 0.10 {
		t.Fatalf("real and simulated entropies differ by %.1f%% (> 10%%): the simulator does not model the real system", 100*d)
	}
	for _, w := range []struct {
		name string
		sum  simulate.Summary
	}{
		{"every delay 10x shorter", simulated(0.1, false)},
		{"no sending schedule and no cover", simulated(1, true)},
	} {
		d := math.Abs(realSum.EntropyMean-w.sum.EntropyMean) / w.sum.EntropyMean
		t.Logf("negative control, a simulation with %s: %.3f bits (%.1f%% from the real trace)", w.name, w.sum.EntropyMean, 100*d)
		if d <= 0.10 {
			t.Fatalf("a simulation with %s is within 10%% of the real trace: the comparison cannot tell a wrong model", w.name)
		}
	}
}
