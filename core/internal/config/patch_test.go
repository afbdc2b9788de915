package config

import (
	"strings"
	"testing"
)

func TestPatchSetsKeysListItemsAndStagesByName(t *testing.T) {
	in := []byte("# a comment\nlisteners:\n  - address: 127.0.0.1:1\npipeline:\n  - name: deliver\n    plugin: onionmx\n    config: {relay_host: a}\n")
	out, err := Patch(in, map[string]any{
		"listeners.0.address":                "127.0.0.1:2",
		"pipeline.deliver.config.relay_host": "b:25",
		"mix.name":                           "node3",
	})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{"# a comment", "address: 127.0.0.1:2", "relay_host: 'b:25'", "name: node3"} {
		if !strings.Contains(s, want) {
			t.Errorf("patched YAML lacks %q:\n%s", want, s)
		}
	}
	if _, err := Patch(in, map[string]any{"pipeline.nosuch.config.x": 1}); err == nil {
		t.Error("patching a missing stage succeeded")
	}
}

func TestPatchRejectsNegativeListIndex(t *testing.T) {
	if _, err := Patch([]byte("listeners:\n  - address: a\n"), map[string]any{"listeners.-1.address": "b"}); err == nil {
		t.Error("patching listeners.-1 succeeded")
	}
}
