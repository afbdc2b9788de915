package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
)

// site is one domain's mail system: its Postfix and its onion gateway
// (configs/onionmx-gateway.yaml) on the test Tor network.
type site struct {
	domain, mapDomain string
	onion             string // the gateway's onion host name
	postfix           *peers.PostfixPeer
	gw                *node
	cfg, data         string
	fromSite, onionIn string
	mapFile           string
}

// newSite prepares a gateway config for domain and learns its onion
// address (`mixmta onion address` creates the key) before anything runs.
func newSite(t *testing.T, tn *peers.TorNet, domain string) *site {
	s := &site{domain: domain, mapDomain: "map." + domain, fromSite: freeAddr(t), onionIn: freeAddr(t)}
	s.mapFile = filepath.Join(t.TempDir(), "map.yml")
	os.WriteFile(s.mapFile, []byte("{}\n"), 0o644)
	s.cfg, s.data = profile(t, "configs/onionmx-gateway.yaml", map[string]any{
		"listeners.0.address":               s.fromSite,
		"listeners.1.address":               s.onionIn,
		"scheduler.window":                  "200ms",
		"log.stats_interval":                "2s",
		"tor.socks_address":                 tn.SocksAddr,
		"tor.control_address":               tn.ControlAddr,
		"tor.cookie_file":                   tn.ControlCookie,
		"pipeline.deliver.config.onion_map": s.mapFile,
	})
	out, err := mixmta(t, "onion", "address", "-c", s.cfg, "onion-in")
	if err != nil {
		t.Fatalf("onion address: %v\n%s", err, out)
	}
	s.onion = strings.TrimSuffix(strings.TrimSpace(out), ":25")
	return s
}

// start runs the site's Postfix (relaying everything else to the gateway)
// and the gateway (local domains to that Postfix; SRV through Tor to dns).
func (s *site) start(t *testing.T, dns string) {
	local := []string{s.domain, s.mapDomain, s.onion}
	s.postfix = peers.Postfix(t, peers.PostfixConfig{
		Domains: local,
		Main: []string{
			"myhostname = mx." + s.domain,
			"relayhost = [" + strings.Replace(s.fromSite, ":", "]:", 1),
			"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
			"smtp_dns_support_level = disabled",
		},
	})
	out, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := config.Patch(out, map[string]any{
		"listeners.1.local_domains":             local,
		"pipeline.deliver.config.local_domains": local,
		"pipeline.deliver.config.local_relay":   s.postfix.Addr,
		"pipeline.deliver.config.resolver":      dns,
	})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.cfg, patched, 0o600)
	s.gw = startNode(t, s.cfg, s.data, s.fromSite)
}

// TestOnionGatewaysBothWays: two sites, example.org and example.net, each
// a Postfix with an onion gateway. Mail goes both ways via SRV records
// (served by dnsmasq, looked up through Tor), via the static map, and to a
// literal .onion address; every body arrives intact in the other site's
// Maildir, and the gateways never relay through their onion services.
func TestOnionGatewaysBothWays(t *testing.T) {
	tn := peers.Tor(t)
	org, net := newSite(t, tn, "example.org"), newSite(t, tn, "example.net")
	dns := peers.Dnsmasq(t, peers.DNSRecords{
		SRV: []peers.SRV{
			{Name: "_onion-mx._tcp.example.org", Target: org.onion, Port: 25, Priority: 0, Weight: 5},
			{Name: "_onion-mx._tcp.example.net", Target: net.onion, Port: 25, Priority: 0, Weight: 5},
		},
		Zones: []string{"example.org", "example.net"},
	})
	// Each side maps the other's map. domain in onionmx's map.yml format.
	os.WriteFile(org.mapFile, []byte(fmt.Sprintf("---\n'%s': ['%s']\n'expyuzz4wqqyqhjn.onion': ['old.example']\n", net.onion, net.mapDomain)), 0o644)
	os.WriteFile(net.mapFile, []byte(fmt.Sprintf("---\n'%s': ['%s']\n", org.onion, org.mapDomain)), 0o644)
	org.start(t, dns.Addr)
	net.start(t, dns.Addr)
	org.gw.waitLog(t, "[TOR] onion service published", 90*time.Second)
	net.gw.waitLog(t, "[TOR] onion service published", 90*time.Second)

	type mail struct {
		from *site
		to   *site
		rcpt string
		body string
	}
	var mails []mail
	for _, p := range [][2]*site{{org, net}, {net, org}} {
		from, to := p[0], p[1]
		for _, rcpt := range []string{"srv@" + to.domain, "map@" + to.mapDomain, "literal@" + to.onion} {
			mails = append(mails, mail{from, to, rcpt, fmt.Sprintf("to %s via %s\r\n.dot line %s\r\n", rcpt, from.domain, token())})
		}
	}
	for _, m := range mails {
		msg := filepath.Join(t.TempDir(), "msg.eml")
		os.WriteFile(msg, []byte("Subject: onion gateway\r\n\r\n"+m.body), 0o644)
		code, out := peers.Swaks(t, "--server", m.from.postfix.Addr, "--from", "user@"+m.from.domain, "--to", m.rcpt, "--data", "@"+msg)
		if code != 0 {
			t.Fatalf("swaks to %s via %s: exit %d\n%s", m.rcpt, m.from.domain, code, out)
		}
	}
	for _, s := range []*site{org, net} {
		files := s.postfix.WaitMessages(t, 3, 3*time.Minute)
		var all []byte
		for _, f := range files {
			b, _ := os.ReadFile(f)
			all = append(all, b...)
		}
		for _, m := range mails {
			if m.to != s {
				continue
			}
			body := strings.ReplaceAll(m.body, "\r\n", "\n")
			if !bytes.Contains(all, []byte("\n\n"+body)) {
				t.Errorf("%s: body for %s missing or changed", s.domain, m.rcpt)
			}
		}
	}
	// The gateways' outbound went through Tor: the onions they reached are
	// only reachable through it; SRV and map were both used.
	for _, s := range []*site{org, net} {
		if strings.Contains(s.gw.log(), "[ERROR]") {
			t.Errorf("%s gateway logged errors:\n%s", s.domain, tailLines(s.gw.log(), 30))
		}
	}
	// Relaying through an onion service is refused.
	c := onionSession(t, tn, org.onion+":25")
	if err := c.Mail("x@example.net", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("victim@elsewhere.example", nil); !asSMTP(err, &se) || se.Code/100 != 5 {
		t.Fatalf("relay through the onion service: %v, want 5xx", err)
	}
	if err := c.Rcpt("someone@"+net.domain, nil); !asSMTP(err, &se) || se.Code/100 != 5 {
		t.Fatalf("relay to another onion domain through the onion service: %v, want 5xx", err)
	}
}
