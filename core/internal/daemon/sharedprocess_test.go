package daemon

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// TestPipelineStagesShareTheirBinarysProcessUnlessOwn: the stages of a
// pipeline that name one binary run in one process, except a stage with
// process: own.
func TestPipelineStagesShareTheirBinarysProcessUnlessOwn(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"delay-exponential", "maildir"} {
		if _, err := plugintest.BuildTo("github.com/mixmta/mixmta/plugins/"+p, dir); err != nil {
			t.Fatal(err)
		}
	}
	text := "plugin_dir: " + dir + "\ndata_dir: " + t.TempDir() + `
pipeline:
  - {name: d1, plugin: delay-exponential, config: {mean: 1s}}
  - {name: d2, plugin: delay-exponential, config: {mean: 2s}}
  - {name: d3, plugin: delay-exponential, process: own, config: {mean: 3s}}
  - {name: deliver, plugin: maildir, config: {path: ` + t.TempDir() + `}}
`
	cfg, err := config.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	started, _, err := StartStages(ctx, cfg, hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, s := range started {
			s.Close()
		}
	}()
	pid := map[string]int{}
	for _, s := range started {
		pid[s.Spec.Stage] = s.Pid()
	}
	if pid["d1"] == 0 || pid["d1"] != pid["d2"] {
		t.Errorf("d1 and d2 in pids %d and %d, want one shared process", pid["d1"], pid["d2"])
	}
	if pid["d3"] == pid["d1"] || pid["deliver"] == pid["d1"] || pid["d3"] == 0 {
		t.Errorf("pids %v: want d3 (process: own) and deliver apart from d1 and d2", pid)
	}
}
