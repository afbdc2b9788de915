package daemon

import (
	"strings"
	"testing"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/sdk"
)

// TestTorStageConfigSetsAndGuardsSOCKS: with a tor: section a stage whose
// plugin declares socks5 gets Tor's SocksPort; a stage that points it
// elsewhere is refused; plugins without the key and configs without tor:
// are untouched.
func TestTorStageConfigSetsAndGuardsSOCKS(t *testing.T) {
	withKey := &sdk.Schema{Type: "object", Properties: map[string]*sdk.Schema{"socks5": {Type: "string"}}}
	noKey := &sdk.Schema{Type: "object", Properties: map[string]*sdk.Schema{"path": {Type: "string"}}}
	cfg := &config.Config{Path: "p.yaml", Tor: &config.Tor{SocksAddress: "127.0.0.1:9050"}}
	st := config.Stage{Name: "deliver", Plugin: "onionmx"}

	got, err := torStageConfig(cfg, st, withKey, []byte(`{"tls":"may"}`))
	if err != nil || string(got) != `{"socks5":"127.0.0.1:9050","tls":"may"}` {
		t.Fatalf("got %s, %v", got, err)
	}
	if got, err := torStageConfig(cfg, st, withKey, []byte(`{"socks5":"127.0.0.1:9050"}`)); err != nil || !strings.Contains(string(got), "9050") {
		t.Fatalf("the same address: %s, %v", got, err)
	}
	if _, err := torStageConfig(cfg, st, withKey, []byte(`{"socks5":"127.0.0.1:1080"}`)); err == nil || !strings.Contains(err.Error(), "set by the tor: section") {
		t.Fatalf("another proxy: %v, want refused", err)
	}
	if got, _ := torStageConfig(cfg, st, noKey, []byte(`{"path":"x"}`)); string(got) != `{"path":"x"}` {
		t.Fatalf("plugin without socks5 changed: %s", got)
	}
	cfg.Tor = nil
	if got, _ := torStageConfig(cfg, st, withKey, []byte(`{"socks5":"127.0.0.1:1080"}`)); string(got) != `{"socks5":"127.0.0.1:1080"}` {
		t.Fatalf("without tor: changed: %s", got)
	}
}
