package e2e

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// simReport is the JSON `mixmta simulate --json` prints.
type simReport struct {
	Network struct {
		Nodes, Hops int
	} `json:"network"`
	Costs struct {
		Submitted, Delivered int
		CoverOverhead        float64 `json:"cover_overhead"`
	} `json:"costs"`
	Messages [][]struct {
		Entropy float64 `json:"entropy_bits"`
		PSender float64 `json:"p_sender"`
	} `json:"messages"`
	Adversaries []struct {
		Scenario    string  `json:"scenario"`
		Messages    int     `json:"messages"`
		EntropyMean float64 `json:"entropy_mean_bits"`
		MaxEntropy  float64 `json:"max_entropy_bits"`
		PTraced     float64 `json:"p_traced"`
	} `json:"adversaries"`
}

func simulateRun(t *testing.T, cfg string, args ...string) []byte {
	t.Helper()
	cmd := mixmtaCommand(t, append([]string{"simulate", "-c", cfg}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("mixmta simulate %v: %v\n%s%s", args, err, out, stderr)
	}
	return out
}

// TestSimulateProfileMeasuresAnonymity: `mixmta simulate` on fog.yaml (its
// own delay plugins sampled) reports an entropy well above zero for a
// global passive observer, and less when nodes are compromised.
func TestSimulateProfileMeasuresAnonymity(t *testing.T) {
	cfg, _ := profile(t, "configs/fog.yaml", nil)
	var r simReport
	out := simulateRun(t, cfg, "--nodes", "10", "--duration", "72h", "--compromised", "0,0.3", "--json", "--messages")
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("simulate --json printed no JSON report: %v\n%s", err, out)
	}
	t.Logf("fog.yaml, 10 nodes, 3 days: %+v", r)
	if r.Network.Hops != 3 || r.Costs.Delivered < 100 || len(r.Adversaries) != 2 {
		t.Fatalf("want 3 hops (fog.yaml's sphinx stage), >= 100 deliveries and 2 adversaries; got %+v", r)
	}
	passive, comp := r.Adversaries[0], r.Adversaries[1]
	if len(r.Messages) != 2 || len(r.Messages[0]) != passive.Messages {
		t.Fatalf("--messages: want one result per scored message per adversary, got %d lists", len(r.Messages))
	}
	sum := 0.0
	for _, m := range r.Messages[0] {
		sum += m.Entropy
	}
	if mean := sum / float64(len(r.Messages[0])); math.Abs(mean-passive.EntropyMean) > 1e-9 {
		t.Fatalf("per-message entropies average %.4f, the summary says %.4f", mean, passive.EntropyMean)
	}
	if passive.EntropyMean < 3 || passive.EntropyMean > passive.MaxEntropy {
		t.Errorf("global passive observer: %.2f bits; fog's hour-long delays should hide a sender among many of %0.f users", passive.EntropyMean, passive.MaxEntropy)
	}
	if comp.EntropyMean >= passive.EntropyMean {
		t.Errorf("30%% compromised nodes left %.2f bits, no less than the passive observer's %.2f", comp.EntropyMean, passive.EntropyMean)
	}
}

// TestSimulateSaysWhenAConfigurationLeaks is the negative control: with no
// delay (every sampled delay scaled to 0) and no cover traffic (no sending
// schedule, no drop or loop packets), the tool
// reports ~0 bits, most messages traced, and says LEAKS. (Only the 1 s
// pool of local-mixnet.yaml still batches packets that happen to meet.)
func TestSimulateSaysWhenAConfigurationLeaks(t *testing.T) {
	cfg, _ := profile(t, "configs/local-mixnet.yaml", nil)
	args := []string{"--nodes", "6", "--duration", "6h", "--rate", "200", "--delay-scale", "0", "--send-rate", "0", "--drop-rate", "0", "--loop-rate", "0", "--compromised", "0"}
	var r simReport
	if err := json.Unmarshal(simulateRun(t, cfg, append(args, "--json")...), &r); err != nil {
		t.Fatal(err)
	}
	a := r.Adversaries[0]
	t.Logf("no delays, no cover: %.3f bits over %d messages, %.1f%% traced", a.EntropyMean, a.Messages, 100*a.PTraced)
	if a.Messages < 100 || a.EntropyMean > 0.25 || a.PTraced < 0.8 {
		t.Fatalf("no delays and no cover gave %.3f bits and %.1f%% traced over %d messages: want ~0 bits, ~all traced", a.EntropyMean, 100*a.PTraced, a.Messages)
	}
	if text := string(simulateRun(t, cfg, args...)); !strings.Contains(text, "LEAKS") {
		t.Fatalf("the text report does not say the configuration leaks:\n%s", text)
	}
}

// TestSimulatePlotsASweep: --sweep and --plot write an SVG of entropy
// against the swept parameter.
func TestSimulatePlotsASweep(t *testing.T) {
	cfg, _ := profile(t, "configs/local-mixnet.yaml", nil)
	svg := filepath.Join(t.TempDir(), "entropy.svg")
	simulateRun(t, cfg, "--nodes", "6", "--duration", "2h", "--rate", "100", "--sweep", "delay_scale=0,1,10", "--plot", svg)
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatalf("no plot written: %v", err)
	}
	if s := string(b); !strings.Contains(s, "<svg") || !strings.Contains(s, "delay_scale") || !strings.Contains(s, "mean entropy") {
		t.Fatalf("%s is not an SVG plot of entropy against delay_scale (%d bytes)", svg, len(b))
	}
}
