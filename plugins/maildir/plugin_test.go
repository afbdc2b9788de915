package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

func TestPluginDeliversThroughTheRealHost(t *testing.T) {
	root := filepath.Join(t.TempDir(), "var", "maildir")
	cfg, _ := json.Marshal(map[string]any{"path": root, "local_domains": []string{"example.org"}})
	p := plugintest.Start(t, pluginBinary(t), string(cfg))
	if info := p.Info(); info.Needs != sdk.NeedHeader|sdk.NeedBodyStream || !info.Has(sdk.KindDeliverer) {
		t.Fatalf("plugin info %+v", info)
	}
	msg := loadMessage(t, "alice@example.org", "../x@example.org", "bob@example.net")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := p.Deliver(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*sdk.Error{}
	for _, r := range res {
		got[r.Rcpt] = sdk.AsError(r.Err)
	}
	if got["alice@example.org"] != nil {
		t.Fatalf("alice: %v", got["alice@example.org"])
	}
	if e := got["../x@example.org"]; e == nil || e.EnhancedCode() != "5.1.3" {
		t.Fatalf("../x: want 5.1.3, got %v", e)
	}
	if e := got["bob@example.net"]; e == nil || e.EnhancedCode() != "5.1.2" {
		t.Fatalf("bob@example.net: want 5.1.2, got %v", e)
	}
	fs := files(t, root)
	if len(fs) != 1 || filepath.Dir(fs[0]) != "example.org/alice/new" {
		t.Fatalf("files %q", fs)
	}
	b, _ := os.ReadFile(filepath.Join(root, fs[0]))
	if !bytes.Equal(b, append(append([]byte(nil), msg.Header...), msg.Body...)) {
		t.Fatalf("stored bytes differ from the message sent through the host")
	}
}

func TestPluginRefusesConfigWithoutPath(t *testing.T) {
	_, err := plugintest.StartErr(t, pluginBinary(t), `{"layout":"single"}`)
	fe, ok := err.(*sdk.FieldError)
	if !ok || fe.Field != "path" {
		t.Fatalf("want a config error on key path, got %v", err)
	}
}

// pluginBinary builds the plugin once per test run.
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "maildir-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtDir = dir
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "maildir"), ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(builtDir, "maildir")
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// TestDelivererConformance runs the SDK's delivery-stage contract on the
// plugin through the real host, delivering into a temp Maildir root.
func TestDelivererConformance(t *testing.T) {
	bin := pluginBinary(t)
	plugintest.DelivererSuite{
		Good: []string{"alice@example.org", "bob@example.org"},
		New: func(t *testing.T) sdk.Deliverer {
			cfg, _ := json.Marshal(map[string]any{"path": filepath.Join(t.TempDir(), "maildir"), "local_domains": []string{"example.org"}})
			p := plugintest.Start(t, bin, string(cfg))
			plugintest.CheckInfo(t, p.Info(), sdk.KindDeliverer)
			return p
		},
	}.Run(t)
}
