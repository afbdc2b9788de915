package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestShowRoundTripsEveryValidFile: the effective config that `mixmta
// config show` prints loads again to the same effective config, and -n
// prints only what the file wrote.
func TestShowRoundTripsEveryValidFile(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		c, err := Load(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out, err := c.Show(false)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		p := filepath.Join(t.TempDir(), "shown.yaml")
		os.WriteFile(p, out, 0o600)
		c2, err := Load(p)
		if err != nil {
			t.Fatalf("%s: the shown config does not load: %v\n%s", f, err, out)
		}
		out2, _ := c2.Show(false)
		if string(out) != string(out2) {
			t.Fatalf("%s: show -> load -> show differs:\n%s\n---\n%s", f, out, out2)
		}
	}
	c, err := Load("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	all, _ := c.Show(false)
	set, _ := c.Show(true)
	for _, want := range []string{"free_space_reserve: 268435456", "max_lifetime: 5d", "window: 1s"} {
		if !strings.Contains(string(all), want) {
			t.Errorf("show lacks the default %q:\n%s", want, all)
		}
		if strings.Contains(string(set), want) {
			t.Errorf("show -n has the default %q, which the file does not write:\n%s", want, set)
		}
	}
	if !strings.Contains(string(set), "pipeline:") {
		t.Errorf("show -n lacks the pipeline the file writes:\n%s", set)
	}
}
