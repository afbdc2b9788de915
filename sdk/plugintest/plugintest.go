// Package plugintest runs a plugin binary through the real plugin host (the
// same launch, handshake and gRPC protocol the mixmta core uses) inside a Go
// test, so a plugin's tests exercise exactly what production runs.
//
//	bin := plugintest.Build(t, ".")              // go build the plugin
//	p := plugintest.Start(t, bin, `{"min":"1s"}`) // launch + Configure
//	ds, err := p.Delay(ctx, sdk.DelayRequest{Count: 3})
package plugintest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/internal/pluginclient"
)

// Plugin is a plugin process launched through the real host, as the core
// launches it: its methods (Info, Check, Transform, Route, Delay, Deliver,
// SetMixState, Mix, Cover, Assemble, Kill, Pid) are the core's calls, and
// an error of the call itself (the plugin crashed) satisfies IsTransport.
type Plugin = pluginclient.Client

// Info is what a plugin reported at start: name, version, stage kinds,
// needs, capabilities and config schema.
type Info = pluginclient.Info

// IsTransport reports whether err is a failure of the call itself (the
// plugin crashed or is unreachable), which the core retries after a
// restart, as opposed to an outcome the stage returned.
func IsTransport(err error) bool { return pluginclient.IsTransport(err) }

// Build compiles the plugin main package at pkg (a directory or import path,
// relative to the test's working directory) into a temp dir and returns the
// binary's path. It fails the test when the build fails.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	out, err := BuildTo(pkg, t.TempDir())
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	return out
}

// BuildTo compiles the plugin main package at pkg into dir and returns the
// binary's path; for a TestMain that builds once for many tests.
func BuildTo(pkg, dir string) (string, error) {
	name := filepath.Base(strings.TrimRight(pkg, "/."))
	if pkg == "." || pkg == "./" {
		wd, _ := os.Getwd()
		name = filepath.Base(wd)
	}
	out := filepath.Join(dir, name)
	if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// Start launches the plugin binary at path, configures it as stage "test"
// with configJSON ("" for defaults), and kills it when the test ends. It
// fails the test on any launch or config error.
func Start(t testing.TB, path, configJSON string) *Plugin {
	t.Helper()
	c, err := StartErr(t, path, configJSON)
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	return c
}

// StartErr is Start returning the launch or Configure error, for tests of
// config validation. The plugin is killed when the test ends.
func StartErr(t testing.TB, path, configJSON string) (*Plugin, error) {
	t.Helper()
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered first, so it runs after Kill
	logger := hclog.New(&hclog.LoggerOptions{Name: "plugintest", Level: hclog.Debug, Output: w})
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: path, Logger: logger})
	if err != nil {
		return nil, err
	}
	t.Cleanup(c.Kill)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Configure(ctx, "test", []byte(configJSON)); err != nil {
		return c, err
	}
	return c, nil
}

// testWriter sends plugin log lines to t.Log until the test ends (t.Log
// after the end panics; late lines are dropped).
type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
