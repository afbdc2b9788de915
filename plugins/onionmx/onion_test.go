package main

import (
	"bufio"
	"crypto/ed25519"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk/onion"
)

func newOnion(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return onion.Address(pub)
}

// onionSetup is a fake SOCKS proxy that routes three onion services to
// one fake MX, a fake DNS zone, and a map file.
type onionSetup struct {
	srvOnion, mapOnion, litOnion string
	proxy                        *socksProxy
	zone                         *zone
	mapFile                      string
	mx                           *fakeMX
}

func newOnionSetup(t *testing.T) *onionSetup {
	t.Helper()
	s := &onionSetup{srvOnion: newOnion(t), mapOnion: newOnion(t), litOnion: newOnion(t)}
	s.mx = startFakeMX(t, fakeOpts{})
	s.zone = &zone{
		rrs: []string{
			"_onion-mx._tcp.srv.test. 60 IN SRV 0 5 2525 " + s.srvOnion + ".",
			// map.test also has an SRV record: the map must win.
			"_onion-mx._tcp.map.test. 60 IN SRV 0 5 2525 " + s.srvOnion + ".",
			"_onion-mx._tcp.bad.test. 60 IN SRV 0 5 25 mx.bad.test.",
			"_onion-mx._tcp.v2.test. 60 IN SRV 0 5 25 expyuzz4wqqyqhjn.onion.",
		},
		nx: map[string]bool{"_onion-mx._tcp.plain.test.": true},
	}
	dnsAddr := fakeDNS(t, s.zone.handle)
	const resolver = "192.0.2.53:53"
	s.proxy = startSOCKS(t, func(dest string) string {
		switch dest {
		case resolver:
			return dnsAddr
		case s.srvOnion + ":2525", s.mapOnion + ":25", s.litOnion + ":25":
			return s.mx.Addr
		}
		return ""
	})
	s.mapFile = filepath.Join(t.TempDir(), "map.yml")
	// onionmx's own format: quoted onion keys, lists of domains, v2
	// entries and empty lists as in the published file.
	writeMap(t, s.mapFile, "---\n'"+s.mapOnion+"': ['map.test', 'Other.Map.Test']\n'expyuzz4wqqyqhjn.onion': ['old.test']\n'"+newOnion(t)+"': []\n")
	return s
}

func writeMap(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (s *onionSetup) config() Config {
	c := testConfig("")
	c.SOCKS5 = s.proxy.Addr
	c.Resolver = "192.0.2.53:53"
	c.OnionMap = s.mapFile
	c.MaxIdle = 0
	return c
}

func (s *onionSetup) dests() string {
	var d []string
	for _, c := range s.proxy.connects() {
		if !strings.HasPrefix(c.dest, "192.0.2.53") {
			d = append(d, c.dest)
		}
	}
	return strings.Join(d, " ")
}

// TestOnionResolutionOrder: a literal onion, the static map (before SRV),
// SRV _onion-mx with its port, then the clearnet policy (refuse by default
// with socks5), each reaching the right onion service through the proxy.
func TestOnionResolutionOrder(t *testing.T) {
	s := newOnionSetup(t)
	d := newTestDeliverer(t, s.config())
	for rcpt, want := range map[string]string{
		"a@srv.test":                       s.srvOnion + ":2525",
		"b@map.test":                       s.mapOnion + ":25",
		"c@other.map.test":                 s.mapOnion + ":25",
		"d@" + strings.ToUpper(s.litOnion): s.litOnion + ":25",
	} {
		before := len(s.proxy.connects())
		got := deliver(t, d, testMessage("s@example.org", rcpt))
		wantResult(t, got, rcpt, false, 0, "")
		var dests []string
		for _, c := range s.proxy.connects()[before:] {
			if !strings.HasPrefix(c.dest, "192.0.2.53") {
				dests = append(dests, c.dest)
			}
		}
		if len(dests) != 1 || dests[0] != want {
			t.Errorf("%s went to %v, want %s", rcpt, dests, want)
		}
	}
	for _, q := range s.zone.queries() {
		if strings.Contains(q, "map.test") {
			t.Errorf("SRV asked for a mapped domain (%s): the map comes first", q)
		}
	}
}

func TestOnionResolutionFailuresSayWhichStep(t *testing.T) {
	s := newOnionSetup(t)
	d := newTestDeliverer(t, s.config())
	cases := []struct {
		rcpt      string
		temporary bool
		code      int
		enhanced  string
		says      string
	}{
		{"a@plain.test", false, 550, "5.7.1", "refused by policy"},
		{"b@bad.test", false, 550, "5.7.1", "SRV target is not a valid v3 onion"},
		{"c@v2.test", false, 550, "5.7.1", "SRV target is not a valid v3 onion"},
		{"d@old.test", false, 550, "5.7.1", "not in the onion map"},
		{"e@expyuzz4wqqyqhjn.onion", false, 550, "5.1.2", "v2 onion address"},
		{"f@" + typo(s.litOnion), false, 550, "5.1.2", "checksum"},
	}
	for _, c := range cases {
		got := deliver(t, d, testMessage("s@example.org", c.rcpt))
		wantResult(t, got, c.rcpt, c.temporary, c.code, c.enhanced)
		if !strings.Contains(got[c.rcpt].Error(), c.says) {
			t.Errorf("%s: %v, want it to say %q", c.rcpt, got[c.rcpt], c.says)
		}
	}
	if dests := s.dests(); dests != "" {
		t.Fatalf("refused recipients still connected to %s", dests)
	}
	s.zone.servfail = true
	got := deliver(t, d, testMessage("s@example.org", "g@srv.test"))
	wantResult(t, got, "g@srv.test", true, 451, "4.4.3")
	if !strings.Contains(got["g@srv.test"].Error(), "SRV _onion-mx lookup") {
		t.Fatalf("SERVFAIL: %v, want the SRV step named", got["g@srv.test"])
	}
}

func TestOnionMapReloadsOnChange(t *testing.T) {
	s := newOnionSetup(t)
	m, err := newOnionMap(s.mapFile, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	m.every = 0
	if _, ok, _ := m.resolve(deliverCtx(t), "new.test"); ok {
		t.Fatal("new.test mapped before it is in the file")
	}
	n := newOnion(t)
	writeMap(t, s.mapFile, "'"+n+"':\n  - new.test\n")
	ts, ok, _ := m.resolve(deliverCtx(t), "new.test")
	if !ok || len(ts) != 1 || ts[0].host != n {
		t.Fatalf("after the change: %v %v, want %s", ts, ok, n)
	}
	if _, ok, _ := m.resolve(deliverCtx(t), "map.test"); ok {
		t.Fatal("map.test still mapped after it left the file")
	}
	// A broken file keeps the last good map.
	writeMap(t, s.mapFile, "'"+n+"': [unclosed\n")
	if _, ok, _ := m.resolve(deliverCtx(t), "new.test"); !ok {
		t.Fatal("a broken map file dropped the last good map")
	}
}

func TestOnionConfigValidation(t *testing.T) {
	s := newOnionSetup(t)
	c := s.config()
	c.Resolver = ""
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "resolver") {
		t.Fatalf("socks5 + srv without resolver: %v, want a resolver error", err)
	}
	c.SRV = false
	if err := c.Validate(); err != nil {
		t.Fatalf("socks5, map only, clearnet refused, no resolver: %v", err)
	}
	c.Clearnet = clearnetDirect
	if err := c.Validate(); err == nil {
		t.Fatal("clearnet: direct with socks5 accepted")
	}
	c = s.config()
	writeMap(t, s.mapFile, "- not a mapping\n")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "onion_map") {
		t.Fatalf("bad map: %v", err)
	}
}

// typo changes one character of an onion address.
func typo(o string) string {
	c := byte('a')
	if o[10] == 'a' {
		c = 'b'
	}
	return o[:10] + string(c) + o[11:]
}

// TestLocalDomainsGoToTheSiteMTADirectly: the site's own domains go to
// local_relay on loopback without the proxy; everything else still goes
// through it.
func TestLocalDomainsGoToTheSiteMTADirectly(t *testing.T) {
	s := newOnionSetup(t)
	c := s.config()
	c.LocalRelay = s.mx.Addr
	c.LocalDomains = []string{"Site.Test", s.litOnion}
	d := newTestDeliverer(t, c)
	for _, rcpt := range []string{"x@site.test", "y@" + s.litOnion} {
		got := deliver(t, d, testMessage("s@example.org", rcpt))
		wantResult(t, got, rcpt, false, 0, "")
	}
	if n := len(s.proxy.connects()); n != 0 {
		t.Fatalf("local delivery used the proxy %d times", n)
	}
	got := deliver(t, d, testMessage("s@example.org", "z@srv.test"))
	wantResult(t, got, "z@srv.test", false, 0, "")
	if s.dests() != s.srvOnion+":2525" {
		t.Fatalf("remote delivery went to %q", s.dests())
	}
	c.LocalRelay = "192.0.2.1:25"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("non-loopback local_relay: %v", err)
	}
}

// TestSocketmapAnswersOnionDomains speaks Postfix's socketmap protocol
// (netstrings) to the lookup server.
func TestSocketmapAnswersOnionDomains(t *testing.T) {
	s := newOnionSetup(t)
	c := s.config()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	c.LookupListen = l.Addr().String()
	l.Close()
	c.LookupTransport = "smtp:[127.0.0.1]:10025"
	d := newTestDeliverer(t, c)
	conn, err := net.Dial("tcp", d.lookup.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for key, want := range map[string]string{
		"map.test":               "OK smtp:[127.0.0.1]:10025",
		"srv.test":               "OK smtp:[127.0.0.1]:10025",
		s.litOnion:               "OK smtp:[127.0.0.1]:10025",
		"plain.test":             "NOTFOUND ",
		"a@map.test":             "OK smtp:[127.0.0.1]:10025",
		"a@plain.test":           "NOTFOUND ",
		".map.test":              "NOTFOUND ",
		"expyuzz4wqqyqhjn.onion": "NOTFOUND ",
	} {
		req := "transport " + key
		fmt.Fprintf(conn, "%d:%s,", len(req), req)
		got, err := readNetstring(r)
		if err != nil || got != want {
			t.Errorf("lookup %q = %q (%v), want %q", key, got, err, want)
		}
	}
}

// TestCircuitsPerDestination: with circuits: 3 new connections to one
// destination take three SOCKS identities in turn; another destination
// never gets one of them.
func TestCircuitsPerDestination(t *testing.T) {
	n := newNetwork("127.0.0.1:9", time.Second, 3)
	seen := map[string]map[string]bool{}
	for _, dest := range []string{"a.onion:25", "b.onion:25"} {
		seen[dest] = map[string]bool{}
		for range 9 {
			seen[dest][n.isolation(dest).User] = true
		}
		if len(seen[dest]) != 3 {
			t.Fatalf("%s used %d identities, want 3", dest, len(seen[dest]))
		}
	}
	for u := range seen["a.onion:25"] {
		if seen["b.onion:25"][u] {
			t.Fatalf("identity %s shared by two destinations", u)
		}
	}
	if one := newNetwork("127.0.0.1:9", time.Second, 1); one.isolation("a.onion:25").User != one.isolation("a.onion:25").User {
		t.Fatal("circuits: 1 gave a destination two identities")
	}
}
