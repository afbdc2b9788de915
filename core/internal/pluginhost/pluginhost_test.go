package pluginhost

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

var delayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pluginhost-test-")
	if err != nil {
		panic(err)
	}
	if delayBin, err = plugintest.BuildTo("github.com/mixmta/mixmta/plugins/delay-exponential", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// window is a delay-exponential config whose every delay is in [d, 2d]
// (mean d): stages with windows that do not overlap are told apart by
// any one delay.
func window(d time.Duration) []byte {
	return []byte(fmt.Sprintf(`{"mean":%q,"min":%q,"max":%q}`, d, d, 2*d))
}

// in reports whether delay got falls in the window of d.
func in(got, d time.Duration) bool { return got >= d && got <= 2*d }

// startDelay launches and configures a delay stage on h.
func startDelay(t *testing.T, h *Host, name string, d time.Duration, own bool) *Stage {
	t.Helper()
	s, err := h.Launch(Spec{Stage: name, Plugin: "delay-exponential", Path: delayBin, Own: own}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Configure(context.Background(), window(d)); err != nil {
		t.Fatal(err)
	}
	return s
}

// sample is one delay of the stage, on the batched call stream.
func sample(t *testing.T, s *Stage) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ds, err := s.Delay(ctx, sdk.DelayRequest{Count: 1})
	if err != nil {
		t.Fatalf("stage %s: %v", s.Spec.Stage, err)
	}
	return ds[0]
}

// TestStagesOfOneBinaryShareAProcessWithTheirOwnConfig: three delay stages
// of the real delay-exponential binary run in one process, each with its
// own config and its own behaviour; a stage that asks for a process of
// its own gets one.
func TestStagesOfOneBinaryShareAProcessWithTheirOwnConfig(t *testing.T) {
	h := NewHost(nil)
	want := map[*Stage]time.Duration{}
	var stages []*Stage
	for i, d := range []time.Duration{time.Hour, 2 * time.Minute, 3 * time.Second} {
		s := startDelay(t, h, fmt.Sprintf("delay%d", i), d, false)
		want[s] = d
		stages = append(stages, s)
	}
	for _, s := range stages {
		if s.Pid() != stages[0].Pid() || s.Pid() == 0 {
			t.Fatalf("stage %s in pid %d, stage %s in pid %d: want one process", s.Spec.Stage, s.Pid(), stages[0].Spec.Stage, stages[0].Pid())
		}
	}
	for range 3 {
		for _, s := range stages {
			if got := sample(t, s); !in(got, want[s]) {
				t.Errorf("stage %s: delay %v, want its own config's [%v, %v]", s.Spec.Stage, got, want[s], 2*want[s])
			}
		}
	}
	own := startDelay(t, h, "own", 4*time.Second, true)
	if own.Pid() == stages[0].Pid() {
		t.Errorf("a stage with Own shares pid %d", own.Pid())
	}
	if got := sample(t, own); !in(got, 4*time.Second) {
		t.Errorf("own stage: delay %v, want [4s, 8s]", got)
	}
	// The process stops with its last stage, not before.
	pid := stages[0].Pid()
	stages[0].Close()
	stages[1].Close()
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the shared process stopped while a stage still uses it")
	}
	if got := sample(t, stages[2]); !in(got, 3*time.Second) {
		t.Errorf("last stage: delay %v, want [3s, 6s]", got)
	}
	stages[2].Close()
	if !waitGone(pid, 10*time.Second) {
		t.Errorf("the shared process %d outlived its last stage", pid)
	}
}

// TestKill9OfASharedProcessBringsBackEveryStage: kill -9 of the process
// two stages share: a call in flight fails as a crash (the engine retries
// its item), and both stages come back in one new process, each with its
// own config.
func TestKill9OfASharedProcessBringsBackEveryStage(t *testing.T) {
	h := NewHost(nil)
	a := startDelay(t, h, "a", time.Hour, false)
	b := startDelay(t, h, "b", 5*time.Second, false)
	old := a.Pid()
	if b.Pid() != old {
		t.Fatalf("pids %d and %d: want one process", old, b.Pid())
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(old, 10*time.Second)
	// The first call after the crash may fail as a transport error (the
	// host learns of the crash from it); it never returns a wrong value.
	for _, s := range []*Stage{b, a} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := s.Delay(ctx, sdk.DelayRequest{Count: 1})
		cancel()
		if err != nil && !isTransport(err) {
			t.Fatalf("stage %s after kill -9: %v, want a value or a crash", s.Spec.Stage, err)
		}
	}
	if got := sample(t, a); !in(got, time.Hour) {
		t.Errorf("stage a after restart: delay %v, want [1h, 2h]", got)
	}
	if got := sample(t, b); !in(got, 5*time.Second) {
		t.Errorf("stage b after restart: delay %v, want [5s, 10s]", got)
	}
	if a.Pid() == old || a.Pid() != b.Pid() {
		t.Errorf("after restart: pids %d and %d (old %d), want one new process", a.Pid(), b.Pid(), old)
	}
	if a.Restarts() != 1 || b.Restarts() != 1 {
		t.Errorf("restarts %d and %d, want 1 each", a.Restarts(), b.Restarts())
	}
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		// A zombie until the host reaps it: read its state.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || len(b) == 0 || containsState(b, 'Z') {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// containsState reports whether /proc/PID/stat says state st.
func containsState(stat []byte, st byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == st
		}
	}
	return false
}

func isTransport(err error) bool { return pluginclient.IsTransport(err) }
