package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
)

// maxHosts caps the MX hosts tried for one domain in one attempt (Postfix's
// smtp_mx_address_limit is 5): over Tor each costs a circuit.
const maxHosts = 5

// target is one host to try for a destination, in order.
type target struct {
	// host is a DNS name without the trailing dot, or an IP literal.
	host string
	port int
	// local: the site's own MTA on loopback (local_relay), dialled
	// directly: it never leaves the host, so it needs no Tor.
	local bool
}

func (t target) String() string { return net.JoinHostPort(t.host, fmt.Sprint(t.port)) }

// resolver maps a recipient domain (lower case A-labels) to the hosts to
// try, best first. handled=false passes the domain to the next resolver in
// the chain. Errors are *sdk.Error: permanent when DNS says the domain
// cannot receive mail, temporary when the lookup itself failed.
type resolver interface {
	resolve(ctx context.Context, domain string) (targets []target, handled bool, err error)
}

// chain asks its resolvers in order; the first that handles a domain wins.
// In MX mode the order is the onionmx one: a literal v3 .onion recipient
// domain, the static onion map, SRV _onion-mx._tcp.DOMAIN, then the
// clearnet policy (MX, or refused).
type chain []resolver

func (c chain) resolve(ctx context.Context, domain string) ([]target, error) {
	var notes []string
	for _, r := range c {
		ts, ok, err := r.resolve(ctx, domain)
		var m miss
		if errors.As(err, &m) {
			notes = append(notes, string(m))
			continue
		}
		if rc, refuse := r.(refuseClearnet); refuse {
			return nil, rc.err(notes)
		}
		if ok || err != nil {
			return ts, err
		}
	}
	return nil, sdk.Permanent(550, "5.1.2", "onionmx: no route to the recipient domain")
}

// newChain builds the resolver chain for cfg; omap is the loaded static
// map (nil if none).
func newChain(cfg Config, dc *dnsClient, omap *onionMap) chain {
	if cfg.RelayHost != "" {
		host, port, _ := splitHostPort(cfg.RelayHost, 25)
		// A relay host on loopback (the node's own MTA) is local delivery:
		// dialled directly, since a Tor exit cannot reach this host.
		return chain{relayResolver{target{host: host, port: port, local: isLoopbackIP(host)}}}
	}
	c := chain{}
	if cfg.LocalRelay != "" {
		host, port, _ := splitHostPort(cfg.LocalRelay, 25)
		c = append(c, localResolver{domains: cfg.localDomains(), t: target{host: host, port: port, local: true}})
	}
	c = append(c, literalOnion{})
	tried := []string{"not a literal onion"}
	if omap != nil {
		c = append(c, omap)
		tried = append(tried, "not in the onion map")
	}
	if cfg.SRV {
		c = append(c, srvResolver{dns: dc})
		tried = append(tried, "no _onion-mx SRV record")
	}
	if cfg.clearnet() == clearnetRefuse {
		return append(c, refuseClearnet{tried: strings.Join(tried, ", ")})
	}
	return append(c, &mxResolver{dns: dc, port: cfg.Port})
}

func isLoopbackIP(h string) bool {
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// localResolver sends the site's own domains (local_domains) to its MTA.
type localResolver struct {
	domains map[string]bool
	t       target
}

func (r localResolver) resolve(_ context.Context, domain string) ([]target, bool, error) {
	if r.domains[domain] {
		return []target{r.t}, true, nil
	}
	return nil, false, nil
}

// relayResolver sends everything to the configured smarthost.
type relayResolver struct{ t target }

func (r relayResolver) resolve(context.Context, string) ([]target, bool, error) {
	return []target{r.t}, true, nil
}

// mxResolver follows RFC 5321 §5.1: MX records sorted by preference (equal
// preferences shuffled), the domain itself as an implicit MX only when it
// has no MX at all but an A or AAAA record, and a null MX (RFC 7505) as a
// permanent failure. An address literal ("[192.0.2.1]") is its own host.
type mxResolver struct {
	dns  *dnsClient
	port int
}

func (r *mxResolver) resolve(ctx context.Context, domain string) ([]target, bool, error) {
	if lit, ok := addressLiteral(domain); ok {
		return []target{{host: lit.String(), port: r.port}}, true, nil
	}
	resp, err := r.dns.query(ctx, domain, domain, dns.TypeMX)
	if err != nil {
		return nil, true, err
	}
	var mxs []*dns.MX
	for _, rr := range resp.Answer {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 0 {
		// Implicit MX: only if the domain has an address.
		addrs, err := r.dns.lookupHost(ctx, domain, domain)
		if err != nil {
			return nil, true, err
		}
		if len(addrs) == 0 {
			return nil, true, sdk.Permanent(550, "5.1.2", "onionmx: recipient domain has no MX and no address record")
		}
		return []target{{host: domain, port: r.port}}, true, nil
	}
	ts, err := orderMX(mxs, r.port)
	return ts, true, err
}

// orderMX sorts MX records by preference, shuffling equal preferences (RFC
// 5321 §5.1), drops null targets mixed with real ones and caps the list at
// maxHosts. A lone null MX "." is a permanent 556 5.1.10 (RFC 7505 §3).
func orderMX(mxs []*dns.MX, port int) ([]target, error) {
	real := make([]*dns.MX, 0, len(mxs))
	for _, mx := range mxs {
		if mx.Mx != "." {
			real = append(real, mx)
		}
	}
	if len(real) == 0 {
		return nil, sdk.Permanent(556, "5.1.10", "onionmx: recipient domain accepts no mail (null MX, RFC 7505)")
	}
	rand.Shuffle(len(real), func(i, j int) { real[i], real[j] = real[j], real[i] })
	slices.SortStableFunc(real, func(a, b *dns.MX) int { return cmp.Compare(a.Preference, b.Preference) })
	var ts []target
	seen := map[string]bool{}
	for _, mx := range real {
		h := strings.ToLower(strings.TrimSuffix(mx.Mx, "."))
		if seen[h] {
			continue
		}
		seen[h] = true
		ts = append(ts, target{host: h, port: port})
		if len(ts) == maxHosts {
			break
		}
	}
	return ts, nil
}

// addressLiteral parses "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321
// §4.1.3).
func addressLiteral(domain string) (netip.Addr, bool) {
	if !strings.HasPrefix(domain, "[") || !strings.HasSuffix(domain, "]") {
		return netip.Addr{}, false
	}
	s := domain[1 : len(domain)-1]
	v6, isV6 := strings.CutPrefix(strings.ToLower(s), "ipv6:")
	if isV6 {
		a, err := netip.ParseAddr(v6)
		return a, err == nil && a.Is6()
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil && a.Is4()
}

// recipientDomain returns the lower-case A-label domain of a recipient
// address, or its address literal, after checking the whole address as an
// RFC 5321 mailbox: a malformed recipient (a control character, no
// domain, an unclosed quote) never reaches a peer. A trailing dot (the
// DNS root) is allowed.
func recipientDomain(addr string) (string, error) {
	m, err := address.Parse(strings.TrimSuffix(addr, "."), true)
	if err != nil {
		return "", sdk.Permanent(553, "5.1.3", "onionmx: recipient is not a valid address: %v", err)
	}
	if address.IsLiteral(m.Domain) {
		if _, ok := addressLiteral(m.Domain); !ok {
			return "", sdk.Permanent(553, "5.1.3", "onionmx: recipient address literal is not an IPv4 or IPv6 address")
		}
	}
	return m.ASCIIDomain(), nil
}

// dnsClient asks one DNS server over TCP, through the network (and so
// through the SOCKS proxy when one is set: DNS never leaves it).
type dnsClient struct {
	server  string // IP:port
	net     *network
	timeout time.Duration
}

// newDNSClient uses server ("IP[:port]") or, if empty, the first
// nameserver of /etc/resolv.conf.
func newDNSClient(server string, n *network, timeout time.Duration) (*dnsClient, error) {
	if server == "" {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(cc.Servers) == 0 {
			return nil, fmt.Errorf("onionmx: no resolver configured and none in /etc/resolv.conf")
		}
		server = net.JoinHostPort(cc.Servers[0], cc.Port)
	} else {
		host, port, err := splitHostPort(server, 53)
		if err != nil {
			return nil, err
		}
		server = net.JoinHostPort(host, fmt.Sprint(port))
	}
	return &dnsClient{server: server, net: n, timeout: timeout}, nil
}

// query asks for name/qtype with recursion desired. domain (the recipient
// domain this lookup serves) selects the SOCKS isolation, so lookups for
// different domains leave Tor through different circuits. NXDOMAIN is a
// permanent 550 5.1.2; any other failure a temporary 451 4.4.3.
func (c *dnsClient) query(ctx context.Context, domain, name string, qtype uint16) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	tempErr := func(why string) error {
		return sdk.Temporary(451, "4.4.3", "onionmx: DNS %s lookup failed: %s", dns.TypeToString[qtype], why)
	}
	conn, err := c.net.dialIsolated(ctx, c.server, "dns "+c.server+" "+domain)
	if err != nil {
		return nil, tempErr(netReason(err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	cl := &dns.Client{Net: "tcp", Timeout: c.timeout}
	resp, _, err := cl.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: conn})
	if err != nil {
		return nil, tempErr(netReason(err))
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		return resp, nil
	case dns.RcodeNameError:
		return nil, sdk.Permanent(550, "5.1.2", "onionmx: recipient domain does not exist (NXDOMAIN)")
	default:
		return nil, tempErr(dns.RcodeToString[resp.Rcode])
	}
}

// lookupHost returns the A then AAAA addresses of name (empty when it has
// none). An NXDOMAIN is returned as an empty list: for an MX host it means
// "try the next host", and the caller of an implicit MX already knows the
// domain exists.
func (c *dnsClient) lookupHost(ctx context.Context, domain, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := c.query(ctx, domain, name, qt)
		if sdk.IsPermanent(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		for _, rr := range resp.Answer {
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out, nil
}
