package daemon

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// TestMixStageConfigSetsAndGuardsPacketSize: with a mix section a mixer
// plugin that declares packet_size gets mix.packet_size; a stage that sets
// another value is refused with its line; the same value, plugins without
// the key or the kind, and configs without mix: are left alone.
func TestMixStageConfigSetsAndGuardsPacketSize(t *testing.T) {
	withKey := &sdk.Schema{Type: "object", Properties: map[string]*sdk.Schema{"packet_size": {Type: "integer"}, "hops": {Type: "integer"}}}
	mixer := pluginclient.Info{Kinds: []sdk.Kind{sdk.KindRouter, sdk.KindMixer}, Schema: withKey}
	cfg := &config.Config{Path: "p.yaml", Mix: &config.Mix{PacketSize: 32768}}
	st := config.Stage{Name: "sphinx", Plugin: "sphinx"}

	got, err := mixStageConfig(cfg, st, mixer, []byte(`{"hops":3}`))
	if err != nil || string(got) != `{"hops":3,"packet_size":32768}` {
		t.Fatalf("got %s, %v", got, err)
	}
	if got, err := mixStageConfig(cfg, st, mixer, []byte(`{"packet_size":32768}`)); err != nil || string(got) != `{"packet_size":32768}` {
		t.Fatalf("the same size: %s, %v", got, err)
	}
	for _, other := range []string{`{"packet_size":65536}`, `{"packet_size":"32768"}`} {
		if _, err := mixStageConfig(cfg, st, mixer, []byte(other)); err == nil || !strings.Contains(err.Error(), "differs from mix.packet_size 32768") {
			t.Fatalf("%s: %v, want refused", other, err)
		}
	}
	router := pluginclient.Info{Kinds: []sdk.Kind{sdk.KindRouter}, Schema: withKey}
	if got, _ := mixStageConfig(cfg, st, router, []byte(`{"packet_size":1024}`)); string(got) != `{"packet_size":1024}` {
		t.Fatalf("a plugin that is no mixer changed: %s", got)
	}
	cfg.Mix = nil
	if got, _ := mixStageConfig(cfg, st, mixer, []byte(`{"packet_size":1024}`)); string(got) != `{"packet_size":1024}` {
		t.Fatalf("without mix: changed: %s", got)
	}
}

// TestSphinxStageCannotDisagreeWithTheMixSection starts the real sphinx
// plugin the way the daemon starts a stage: with mix.packet_size 32768 and
// no packet_size in the stage, the stage refuses a 65536-byte packet (its
// own default) as the wrong size (before it looks for a key), so the mix section's value is the one it
// uses; a stage config that names another size does not start.
func TestSphinxStageCannotDisagreeWithTheMixSection(t *testing.T) {
	dir := t.TempDir()
	if _, err := plugintest.BuildTo("github.com/mixmta/mixmta/plugins/sphinx", dir); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Path: "p.yaml", PluginDir: dir, Mix: &config.Mix{PacketSize: 32768}}
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ps, err := startStage(ctx, cfg, config.Stage{Name: "sphinx", Plugin: "sphinx", Line: 1}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.SetMixState(ctx, sdk.MixState{Epoch: 1, Self: sdk.NodeID{1}, KeyDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	_, err = ps.Mix(ctx, make([]byte, 65536))
	if err == nil || !strings.Contains(err.Error(), "packet_size is 32768") {
		t.Fatalf("a 65536-byte packet: %v, want refused as not mix.packet_size 32768", err)
	}
	_, err = ps.Mix(ctx, make([]byte, 32768))
	if err == nil || strings.Contains(err.Error(), "packet_size is") {
		t.Fatalf("a 32768-byte packet of zeros: %v, want refused for something other than its size", err)
	}

	var node yaml.Node
	if err := yaml.Unmarshal([]byte("packet_size: 65536\n"), &node); err != nil {
		t.Fatal(err)
	}
	st := config.Stage{Name: "sphinx", Plugin: "sphinx", Line: 1, Config: config.RawBlock{Node: node.Content[0]}}
	if ps, err := startStage(ctx, cfg, st, log); err == nil {
		ps.Close()
		t.Fatal("a sphinx stage with packet_size 65536 started under mix.packet_size 32768")
	} else if !strings.Contains(err.Error(), "differs from mix.packet_size 32768") {
		t.Fatalf("want the disagreement named, got %v", err)
	}
}
