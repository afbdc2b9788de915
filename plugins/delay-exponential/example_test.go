package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
)

// TestREADMEExampleIsValidAndCurrent keeps the README's pipeline block
// honest: it must be testdata/pipeline.yaml verbatim, and its config block
// must pass this plugin's validation.
func TestREADMEExampleIsValidAndCurrent(t *testing.T) {
	example, err := os.ReadFile("testdata/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```yaml\n"+string(example)+"```") {
		t.Fatalf("README.md does not show testdata/pipeline.yaml verbatim:\n%s", example)
	}
	var doc struct {
		Pipeline []struct {
			Name, Plugin string
			Config       map[string]any
		}
	}
	if err := yaml.Unmarshal(example, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Pipeline) != 1 || doc.Pipeline[0].Plugin != "delay-exponential" {
		t.Fatalf("want one delay-exponential stage, got %+v", doc.Pipeline)
	}
	raw, err := json.Marshal(doc.Pipeline[0].Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdk.DecodeConfig(Config{}, raw); err != nil {
		t.Fatalf("README example config %s is rejected: %v", raw, err)
	}
}
