package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// loopStatsRow is one line of `mixmta mixnet stats`.
type loopStatsRow struct {
	reliability          float64 // percent; -1 for "-"
	returned, lost       int
	pending              int
	health, median, high string
}

// mixnetStats runs `mixmta mixnet stats -c cfg` and parses its table by
// node name.
func mixnetStats(t *testing.T, cfg string) (map[string]loopStatsRow, string) {
	t.Helper()
	out, err := mixmta(t, "mixnet", "stats", "-c", cfg)
	if err != nil {
		t.Fatalf("mixnet stats: %v\n%s", err, out)
	}
	rows := map[string]loopStatsRow{}
	header := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "NAME" {
			header = true
			continue
		}
		if !header || len(f) == 0 {
			continue
		}
		if len(f) != 10 {
			t.Fatalf("mixnet stats: bad line %q\n%s", line, out)
		}
		r := loopStatsRow{reliability: -1, median: f[3], high: f[4], health: f[9]}
		if f[2] != "-" {
			v, err := strconv.ParseFloat(strings.TrimSuffix(f[2], "%"), 64)
			if err != nil {
				t.Fatalf("mixnet stats: reliability %q: %v", f[2], err)
			}
			r.reliability = v
		}
		r.returned, _ = strconv.Atoi(f[6])
		r.lost, _ = strconv.Atoi(f[7])
		r.pending, _ = strconv.Atoi(f[8])
		rows[f[0]] = r
	}
	return rows, out
}

// TestMixnetStatsShowsTheNodeThatIsDown: on a real local mixnet of 5
// nodes with frequent loops, `mixmta mixnet stats` on node1 lists the 4
// other nodes by name with their loops; once node5 is stopped, its loops
// are lost and it shows down with a lower reliability than every other
// node, which stay up with 90 % or more as their loops keep returning.
func TestMixnetStatsShowsTheNodeThatIsDown(t *testing.T) {
	m := startMixnet(t, 5, freeAddr(t), map[string]any{
		"mix.cover":        map[string]any{"drop_rate": 0.2, "loop_rate": 4},
		"mix.loop_timeout": "8s",
		// Three failed probes 3 s apart before node5 is down: the loops
		// node1 sends through it meanwhile are lost.
		"mix.probe_interval": "3s",
	})
	m.waitHealthy(t)
	cfg := filepath.Join(m.dir, "node1", "mixmta.yaml")
	others := []string{"node2", "node3", "node4"}

	// Every other node carries returned loops and is up; node5
	// is stopped while a loop through it is out (just sent: it has not
	// reached node5 yet, most likely), so that one at least is lost even if
	// few paths take node5 before the probes notice it is down.
	var rows map[string]loopStatsRow
	var out string
	deadline := time.Now().Add(60 * time.Second)
	for {
		rows, out = mixnetStats(t, cfg)
		ok := len(rows) == 4
		for _, name := range append(others, "node5") {
			ok = ok && rows[name].returned >= 3
		}
		ok = ok && rows["node5"].pending > 0
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loops through every node never returned:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, ok := rows["node1"]; ok {
		t.Fatalf("node1 lists itself:\n%s", out)
	}
	for name, r := range rows {
		if r.health != "up" || r.median == "-" || r.high == "-" {
			t.Fatalf("%s before the stop: %+v\n%s", name, r, out)
		}
	}

	// SIGKILL, not a graceful stop: a stopping node drains its pool, so
	// the loop that was out through it would come back.
	m.nodes[4].kill9()
	deadline = time.Now().Add(120 * time.Second)
	for {
		rows, out = mixnetStats(t, cfg)
		down := rows["node5"]
		why := ""
		switch {
		case down.lost == 0:
			why = "node5 has no lost loop"
		case down.reliability < 0 || down.reliability >= 100:
			why = "node5 reliability is not below 100 %"
		case down.health != "down":
			why = "node5 is not down"
		}
		for _, name := range others {
			r := rows[name]
			switch {
			case why != "":
			case r.health != "up":
				why = name + " is not up"
			case r.reliability < 90:
				why = name + " is below 90 %"
			case r.reliability <= down.reliability:
				why = fmt.Sprintf("%s (%.1f %%) is not more reliable than node5 (%.1f %%)", name, r.reliability, down.reliability)
			}
		}
		if why == "" {
			t.Logf("mixnet stats on node1 with node5 down:\n%s", out)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:\n%s", why, out)
		}
		time.Sleep(time.Second)
	}
}
