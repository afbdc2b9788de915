package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mixmta/mixmta/sdk"
)

func mx(host string, pref uint16) *dns.MX {
	return &dns.MX{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeMX, Class: dns.ClassINET}, Mx: host, Preference: pref}
}

func TestOrderMXSortsByPreferenceAndDropsNullAmongReal(t *testing.T) {
	cases := []struct {
		name string
		in   []*dns.MX
		want string // hosts joined by space; prefix "!" = error code
	}{
		{"sorted", []*dns.MX{mx("b.example.", 20), mx("a.example.", 10), mx("c.example.", 30)}, "a.example b.example c.example"},
		{"duplicates once", []*dns.MX{mx("A.example.", 10), mx("a.example.", 20)}, "a.example"},
		{"lone null MX", []*dns.MX{mx(".", 0)}, "!556 5.1.10"},
		{"null among real is ignored", []*dns.MX{mx(".", 0), mx("a.example.", 10)}, "a.example"},
		{"capped", []*dns.MX{mx("a.", 1), mx("b.", 2), mx("c.", 3), mx("d.", 4), mx("e.", 5), mx("f.", 6)}, "a b c d e"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts, err := orderMX(c.in, 25)
			var got string
			if err != nil {
				e := sdk.AsError(err)
				got = fmt.Sprintf("!%d %s", e.SMTPCode(), e.EnhancedCode())
				if e.Temporary {
					got += " temporary"
				}
			} else {
				var hs []string
				for _, t := range ts {
					hs = append(hs, t.host)
				}
				got = strings.Join(hs, " ")
			}
			if got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestOrderMXShufflesEqualPreferences(t *testing.T) {
	firsts := map[string]int{}
	for i := 0; i < 200; i++ {
		ts, err := orderMX([]*dns.MX{mx("z.example.", 5), mx("a.example.", 10), mx("b.example.", 10)}, 25)
		if err != nil {
			t.Fatal(err)
		}
		if ts[0].host != "z.example" {
			t.Fatalf("lowest preference not first: %v", ts)
		}
		firsts[ts[1].host]++
	}
	if firsts["a.example"] < 40 || firsts["b.example"] < 40 {
		t.Fatalf("equal-preference MX not shuffled: second place counts %v of 200", firsts)
	}
}

func TestAddressLiteralsAndRecipientDomains(t *testing.T) {
	cases := []struct {
		addr, want string // want "!" = permanent error
	}{
		{"a@Example.ORG", "example.org"},
		{"a@example.org.", "example.org"},
		{"user@bücher.example", "xn--bcher-kva.example"},
		{"a@[192.0.2.1]", "[192.0.2.1]"},
		{"a@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"},
		{"\"a@b\"@example.org", "example.org"},
		{"nodomain", "!"},
		{"a@", "!"},
		{"a@bad..domain", "!"},
		{"a@\xff.example", "!"},
	}
	for _, c := range cases {
		got, err := recipientDomain(c.addr)
		if err != nil {
			if !sdk.IsPermanent(err) {
				t.Errorf("%q: error %v is not permanent", c.addr, err)
			}
			got = "!"
		}
		if got != c.want {
			t.Errorf("recipientDomain(%q) = %q, want %q", c.addr, got, c.want)
		}
	}
	for lit, ok := range map[string]bool{"[192.0.2.1]": true, "[IPv6:2001:db8::1]": true, "[2001:db8::1]": false, "[IPv6:192.0.2.1]": false, "192.0.2.1": false, "[999.1.1.1]": false} {
		if _, got := addressLiteral(lit); got != ok {
			t.Errorf("addressLiteral(%q) ok = %v, want %v", lit, got, ok)
		}
	}
}

// zone is a fake DNS zone for the in-process server: answers by name and
// type; names in nx answer NXDOMAIN; servfail answers SERVFAIL for all.
type zone struct {
	mu       sync.Mutex
	rrs      []string // zone-file lines
	nx       map[string]bool
	servfail bool
	asked    []string // "name TYPE" of every query
}

func (z *zone) handle(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	z.mu.Lock()
	z.asked = append(z.asked, q.Name+" "+dns.TypeToString[q.Qtype])
	z.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	switch {
	case z.servfail:
		m.Rcode = dns.RcodeServerFailure
	case z.nx[q.Name]:
		m.Rcode = dns.RcodeNameError
	default:
		for _, line := range z.rrs {
			rr, err := dns.NewRR(line)
			if err != nil {
				panic(err)
			}
			if strings.EqualFold(rr.Header().Name, q.Name) && rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
	}
	w.WriteMsg(m)
}

func (z *zone) queries() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]string(nil), z.asked...)
}

func mxResolverFor(t *testing.T, z *zone) *mxResolver {
	t.Helper()
	addr := fakeDNS(t, z.handle)
	dc, err := newDNSClient(addr, newNetwork("", 2*time.Second, 1), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &mxResolver{dns: dc, port: 2525}
}

func TestMXResolution(t *testing.T) {
	cases := []struct {
		name string
		z    *zone
		want string // hosts, or "!CODE ENH [temporary]"
	}{
		{"MX records by preference", &zone{rrs: []string{"example.org. 60 IN MX 20 mx2.example.org.", "example.org. 60 IN MX 10 mx1.example.org."}}, "mx1.example.org:2525 mx2.example.org:2525"},
		{"no MX but an A record: implicit MX", &zone{rrs: []string{"example.org. 60 IN A 192.0.2.1"}}, "example.org:2525"},
		{"no MX but an AAAA record: implicit MX", &zone{rrs: []string{"example.org. 60 IN AAAA 2001:db8::1"}}, "example.org:2525"},
		{"no MX and no address", &zone{}, "!550 5.1.2"},
		{"null MX", &zone{rrs: []string{"example.org. 60 IN MX 0 ."}}, "!556 5.1.10"},
		{"NXDOMAIN", &zone{nx: map[string]bool{"example.org.": true}}, "!550 5.1.2"},
		{"SERVFAIL is temporary", &zone{servfail: true}, "!451 4.4.3 temporary"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mxResolverFor(t, c.z)
			ts, _, err := r.resolve(context.Background(), "example.org")
			var got string
			if err != nil {
				e := sdk.AsError(err)
				got = fmt.Sprintf("!%d %s", e.SMTPCode(), e.EnhancedCode())
				if e.Temporary {
					got += " temporary"
				}
			} else {
				var hs []string
				for _, t := range ts {
					hs = append(hs, t.String())
				}
				got = strings.Join(hs, " ")
			}
			if got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestDNSServerDownIsTemporary(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	dc, err := newDNSClient(addr, newNetwork("", time.Second, 1), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = (&mxResolver{dns: dc, port: 25}).resolve(context.Background(), "example.org")
	if e := sdk.AsError(err); e == nil || !e.Temporary || e.EnhancedCode() != "4.4.3" {
		t.Fatalf("want temporary 4.4.3, got %v", err)
	}
}

func TestMXModeTriesHostsInPreferenceOrder(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	// mx0 (best) has an address where nothing listens; mx1 works; mx2
	// must never be tried.
	z := &zone{rrs: []string{
		"example.org. 60 IN MX 5 mx0.example.org.",
		"example.org. 60 IN MX 10 mx1.example.org.",
		"example.org. 60 IN MX 20 mx2.example.org.",
		"mx0.example.org. 60 IN A 127.0.0.2",
		"mx1.example.org. 60 IN A 127.0.0.1",
		"mx2.example.org. 60 IN A 127.0.0.1",
	}}
	cfg := testConfig("")
	cfg.Resolver = fakeDNS(t, z.handle)
	cfg.Port = f.Port
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@example.org"))
	wantResult(t, got, "a@example.org", false, 0, "")
	q := strings.Join(z.queries(), ",")
	if !strings.Contains(q, "mx0.example.org. A") || !strings.Contains(q, "mx1.example.org. A") || strings.Contains(q, "mx2.") {
		t.Fatalf("queries %s: want mx0 then mx1 looked up, mx2 never", q)
	}
}

func TestSOCKSCarriesHostNamesAndIsolatesDestinations(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	// Every name resolves to 127.0.0.9 where nothing listens: only the
	// proxy, which is handed the names, knows where the MX hosts are.
	z := &zone{rrs: []string{
		"a.test. 60 IN MX 10 mx.a.test.", "b.test. 60 IN MX 10 mx.b.test.",
		"mx.a.test. 60 IN A 127.0.0.9", "mx.b.test. 60 IN A 127.0.0.9",
	}}
	dnsAddr := fakeDNS(t, z.handle)
	// The resolver is a TEST-NET address: unreachable unless the proxy
	// carries the DNS connection.
	const resolver = "192.0.2.53:53"
	proxy := startSOCKS(t, func(dest string) string {
		switch dest {
		case resolver:
			return dnsAddr
		case "mx.a.test:25", "mx.b.test:25":
			return f.Addr
		}
		return ""
	})
	cfg := testConfig("")
	cfg.SOCKS5 = proxy.Addr
	cfg.Resolver = resolver
	cfg.MaxIdle = 0
	cfg.Clearnet = clearnetTor
	d := newTestDeliverer(t, cfg)
	for i := 0; i < 2; i++ {
		got := deliver(t, d, testMessage("s@example.org", "x@a.test", "y@b.test"))
		wantResult(t, got, "x@a.test", false, 0, "")
		wantResult(t, got, "y@b.test", false, 0, "")
	}
	for _, q := range z.queries() {
		if !strings.HasSuffix(q, " MX") && !(strings.HasPrefix(q, "_onion-mx._tcp.") && strings.HasSuffix(q, " SRV")) {
			t.Fatalf("DNS query %q: with SOCKS only SRV _onion-mx and MX may be looked up, host names go to the proxy", q)
		}
	}
	users := map[string]map[string]bool{} // dest -> usernames
	for _, c := range proxy.connects() {
		if c.dest == resolver && c.isName {
			t.Fatalf("resolver connect sent as a name: %+v", c)
		}
		if strings.HasPrefix(c.dest, "mx.") && !c.isName {
			t.Fatalf("MX host connect resolved locally: %+v", c)
		}
		if c.user == "" || c.pass == "" {
			t.Fatalf("connect without isolation credentials: %+v", c)
		}
		if users[c.dest] == nil {
			users[c.dest] = map[string]bool{}
		}
		users[c.dest][c.user] = true
	}
	a, b := users["mx.a.test:25"], users["mx.b.test:25"]
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("want one stable SOCKS username per destination over 2 messages, got %v", users)
	}
	for u := range a {
		if b[u] {
			t.Fatalf("destinations mx.a.test and mx.b.test share SOCKS username %s", u)
		}
	}
	if len(users[resolver]) != 2 {
		t.Fatalf("DNS lookups for a.test and b.test used %d SOCKS usernames, want 2 (one per domain)", len(users[resolver]))
	}
}

func TestSOCKSProxyDownIsTemporaryAndNeverDirect(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	// A relay host by name: only the proxy could reach it. (A loopback
	// IP relay host is local delivery, dialled directly: see
	// TestLoopbackRelayHostIsLocal.)
	cfg := testConfig("relay.test:" + f.Addr[strings.LastIndex(f.Addr, ":")+1:])
	cfg.SOCKS5 = dead
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", true, 451, "4.4.1")
	if e := sdk.AsError(got["a@example.net"]); !strings.Contains(e.Message, "SOCKS proxy unreachable") {
		t.Fatalf("error %q does not say the proxy is down", e.Message)
	}
	if conns, _ := f.counts(); conns != 0 {
		t.Fatalf("the relay got %d direct connections with the proxy down", conns)
	}
}

func TestSOCKSReplyIsReportedWithoutAddresses(t *testing.T) {
	proxy := startSOCKS(t, func(string) string { return "" })
	cfg := testConfig("mx.secret-domain.test:25")
	cfg.SOCKS5 = proxy.Addr
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@secret-domain.test"))
	wantResult(t, got, "a@secret-domain.test", true, 451, "4.4.1")
	msg := sdk.AsError(got["a@secret-domain.test"]).Message
	if !strings.Contains(msg, "host unreachable") || strings.Contains(msg, "secret") || strings.Contains(msg, strconv.Itoa(25)+")") {
		t.Fatalf("error message %q: want the SOCKS reason without host names", msg)
	}
}

// TestLoopbackRelayHostIsLocal: the node's own MTA on a loopback IP is
// reached directly even with a proxy (a Tor exit cannot reach this host).
func TestLoopbackRelayHostIsLocal(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	cfg := testConfig(f.Addr)
	cfg.SOCKS5 = dead
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", false, 0, "")
}
