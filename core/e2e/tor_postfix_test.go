package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestPostfixRoutesOnionDomainsThroughGatewayBySocketmap: Postfix asks the
// gateway's socketmap (transport_maps) for each recipient domain; an
// onion-reachable domain (here through the static map) is handed to the
// gateway, which delivers it over Tor to the onion service; another domain
// is not found there and Postfix delivers it itself.
func TestPostfixRoutesOnionDomainsThroughGatewayBySocketmap(t *testing.T) {
	tn := peers.Tor(t)
	onionSink, directSink := peers.SmtpSink(t), peers.SmtpSink(t)
	onion := tn.AddOnion(t, 25, onionSink.Addr)
	mapFile := filepath.Join(t.TempDir(), "map.yml")
	os.WriteFile(mapFile, []byte("'"+onion+"': ['onion.example']\n"), 0o644)
	fromSite, lookup := freeAddr(t), freeAddr(t)
	cfg, data := profile(t, "configs/onionmx-gateway.yaml", map[string]any{
		"listeners.0.address":                      fromSite,
		"listeners.1.address":                      freeAddr(t),
		"scheduler.window":                         "200ms",
		"tor.socks_address":                        tn.SocksAddr,
		"tor.control_address":                      tn.ControlAddr,
		"tor.cookie_file":                          tn.ControlCookie,
		"pipeline.deliver.config.onion_map":        mapFile,
		"pipeline.deliver.config.srv":              false,
		"pipeline.deliver.config.lookup_listen":    lookup,
		"pipeline.deliver.config.lookup_transport": "smtp:[127.0.0.1]:" + fromSite[strings.LastIndex(fromSite, ":")+1:],
	})
	gw := startNode(t, cfg, data, fromSite)
	pf := peers.Postfix(t, peers.PostfixConfig{
		Domains: []string{"example.org"},
		Main: []string{
			"myhostname = mx.example.org",
			"transport_maps = socketmap:inet:" + lookup + ":transport, inline:{ direct.example=smtp:[127.0.0.1]:" + directSink.Addr[strings.LastIndex(directSink.Addr, ":")+1:] + " }",
			"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
			"smtp_dns_support_level = disabled",
		},
	})
	for _, rcpt := range []string{"a@onion.example", "b@direct.example"} {
		if code, out := peers.Swaks(t, "--server", pf.Addr, "--from", "user@example.org", "--to", rcpt, "--body", "to "+rcpt); code != 0 {
			t.Fatalf("swaks to %s: exit %d\n%s", rcpt, code, out)
		}
	}
	got := map[*peers.SinkPeer][]string{}
	for _, s := range []*peers.SinkPeer{onionSink, directSink} {
		for _, m := range sinkMessages(t, s, 1, 2*time.Minute) {
			got[s] = append(got[s], m.RcptTo()...)
		}
	}
	if r := got[onionSink]; len(r) != 1 || r[0] != "a@onion.example" {
		t.Fatalf("onion service got %v, want a@onion.example", r)
	}
	if r := got[directSink]; len(r) != 1 || r[0] != "b@direct.example" {
		t.Fatalf("direct destination got %v, want b@direct.example", r)
	}
	// Postfix handed the onion domain to the gateway, and only that one.
	log := pf.Log()
	if !strings.Contains(log, "to=<a@onion.example>, relay=127.0.0.1[127.0.0.1]:"+fromSite[strings.LastIndex(fromSite, ":")+1:]) {
		t.Fatalf("Postfix did not relay the onion domain to the gateway:\n%s", log)
	}
	if n := strings.Count(gw.log(), "[SMTP] accepted"); n != 1 {
		t.Fatalf("gateway accepted %d messages, want 1", n)
	}
}
