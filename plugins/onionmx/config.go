package main

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	RelayHost       string   `json:"relay_host" doc:"smarthost host[:port] (port 25 if omitted) that gets every message; empty: deliver to each recipient domain's MX"`
	Port            int      `json:"port" doc:"TCP port of MX hosts (MX mode only)"`
	Resolver        string   `json:"resolver" doc:"DNS server IP[:port] (port 53 if omitted) asked for MX, A and AAAA over TCP; empty: first nameserver of /etc/resolv.conf (not allowed with socks5)"`
	SOCKS5          string   `json:"socks5" doc:"SOCKS5 proxy host:port (e.g. Tor's 127.0.0.1:9050) for every connection, DNS included; empty: direct connections"`
	TLS             string   `json:"tls" doc:"STARTTLS policy: none, may (opportunistic) or require"`
	TLSVerify       bool     `json:"tls_verify" doc:"with tls: require, verify the server certificate against the MX host name (or relay host)"`
	TLSCAFile       string   `json:"tls_ca_file" doc:"PEM file of CA certificates for tls_verify; empty: the system roots"`
	HELO            string   `json:"helo" doc:"name sent in EHLO/HELO; set it to this node's public name or onion address"`
	LocalDomains    []string `json:"local_domains" doc:"the site's own domains (and its onion host name): delivered to local_relay, never over Tor"`
	LocalRelay      string   `json:"local_relay" doc:"the site's MTA for local_domains, loopback IP:port (dialled directly: it never leaves the host)"`
	LookupListen    string   `json:"lookup_listen" doc:"loopback IP:port where Postfix's socketmap lookups are answered: onion-reachable domains get lookup_transport, others NOTFOUND; empty: off"`
	LookupTransport string   `json:"lookup_transport" doc:"the Postfix transport returned for onion-reachable domains, e.g. smtp:[127.0.0.1]:10025 (this gateway's listener)"`
	Circuits        int      `json:"circuits" doc:"Tor circuits (SOCKS identities) per destination, used in turn by new connections (1-64); destinations never share one"`
	OnionMap        string   `json:"onion_map" doc:"static onion map in onionmx's map.yml format (onion -> list of domains), re-read when it changes; empty: none"`
	SRV             bool     `json:"srv" doc:"look up SRV _onion-mx._tcp.DOMAIN (through Tor with socks5); the target must be a v3 onion"`
	Clearnet        string   `json:"clearnet" doc:"a domain with no onion route: refuse, tor (MX through a Tor exit; needs socks5) or direct (MX without Tor); empty: refuse with socks5, direct without"`

	ConnectTimeout sdk.Duration `json:"connect_timeout" doc:"TCP (or SOCKS) connect, including a Tor circuit"`
	CommandTimeout sdk.Duration `json:"command_timeout" doc:"each reply: greeting, EHLO, STARTTLS and TLS handshake, MAIL, RCPT, DATA, RSET"`
	DataTimeout    sdk.Duration `json:"data_timeout" doc:"sending the message and receiving the reply to the final dot"`
	DNSTimeout     sdk.Duration `json:"dns_timeout" doc:"one DNS query over TCP, connect included"`
	IdleTimeout    sdk.Duration `json:"idle_timeout" doc:"how long an idle connection is kept for reuse"`
	MaxIdle        int          `json:"max_idle" doc:"idle connections kept per destination host:port; 0 disables reuse"`
	Pipelining     bool         `json:"pipelining" doc:"send RSET, MAIL, RCPT and DATA in one write when the server offers PIPELINING (RFC 2920): one round trip instead of one per command"`
}

// localDomains is LocalDomains as a set of lower-case names.
func (c *Config) localDomains() map[string]bool {
	m := map[string]bool{}
	for _, d := range c.LocalDomains {
		m[strings.ToLower(strings.TrimSuffix(d, "."))] = true
	}
	return m
}

// clearnet is the effective clearnet policy.
func (c *Config) clearnet() string {
	switch {
	case c.Clearnet != "":
		return c.Clearnet
	case c.SOCKS5 != "":
		return clearnetRefuse
	}
	return clearnetDirect
}

// needsDNS: MX mode with SRV lookups or clearnet MX delivery.
func (c *Config) needsDNS() bool {
	return c.RelayHost == "" && (c.SRV || c.clearnet() != clearnetRefuse)
}

// TLS policies.
const (
	tlsNone    = "none"
	tlsMay     = "may"
	tlsRequire = "require"
)

// Validate checks every key; errors name the key.
func (c *Config) Validate() error {
	if c.RelayHost != "" {
		if _, _, err := splitHostPort(c.RelayHost, 25); err != nil {
			return sdk.FieldErrorf("relay_host", "%v", err)
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		return sdk.FieldErrorf("port", "must be 1-65535, got %d", c.Port)
	}
	if c.Resolver != "" {
		host, _, err := splitHostPort(c.Resolver, 53)
		if err != nil {
			return sdk.FieldErrorf("resolver", "%v", err)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			return sdk.FieldErrorf("resolver", "must be an IP address with optional port (resolving the resolver would itself need DNS), got %q", c.Resolver)
		}
	}
	if c.SOCKS5 != "" {
		if _, _, err := splitHostPort(c.SOCKS5, 0); err != nil {
			return sdk.FieldErrorf("socks5", "%v", err)
		}
		// DNS must never bypass the proxy: without an explicit resolver
		// the system resolver would ask over the clear net.
		if c.needsDNS() && c.Resolver == "" {
			return sdk.FieldErrorf("resolver", "required with socks5 for SRV or MX lookups: DNS goes over TCP through the proxy to this server, never around it (or set srv: false and clearnet: refuse)")
		}
	}
	if c.LocalRelay != "" {
		host, _, err := splitHostPort(c.LocalRelay, 25)
		if err != nil {
			return sdk.FieldErrorf("local_relay", "%v", err)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			return sdk.FieldErrorf("local_relay", "must be a loopback IP literal (the site's MTA on this host; it is dialled directly, not through Tor), got %q", c.LocalRelay)
		}
		if c.RelayHost != "" {
			return sdk.FieldErrorf("local_relay", "not with relay_host (which gets every message)")
		}
		if len(c.LocalDomains) == 0 {
			return sdk.FieldErrorf("local_domains", "required with local_relay")
		}
	} else if len(c.LocalDomains) > 0 {
		return sdk.FieldErrorf("local_relay", "required with local_domains")
	}
	if c.LookupListen != "" {
		host, _, err := splitHostPort(c.LookupListen, 0)
		if err != nil {
			return sdk.FieldErrorf("lookup_listen", "%v", err)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			return sdk.FieldErrorf("lookup_listen", "must be a loopback IP:port (Postfix on this host asks it), got %q", c.LookupListen)
		}
		if c.LookupTransport == "" || strings.ContainsAny(c.LookupTransport, " \t\r\n") {
			return sdk.FieldErrorf("lookup_transport", "required with lookup_listen: a Postfix transport such as smtp:[127.0.0.1]:10025, no spaces")
		}
		if c.RelayHost != "" {
			return sdk.FieldErrorf("lookup_listen", "needs MX mode (no relay_host): it answers from the onion resolution")
		}
	} else if c.LookupTransport != "" {
		return sdk.FieldErrorf("lookup_listen", "required with lookup_transport")
	}
	switch c.Clearnet {
	case "", clearnetRefuse:
	case clearnetTor:
		if c.SOCKS5 == "" {
			return sdk.FieldErrorf("clearnet", "tor needs socks5 (MX delivery through a Tor exit)")
		}
	case clearnetDirect:
		if c.SOCKS5 != "" {
			return sdk.FieldErrorf("clearnet", "direct would bypass the SOCKS5 proxy (Tor); use tor or refuse")
		}
	default:
		return sdk.FieldErrorf("clearnet", "must be refuse, tor or direct, got %q", c.Clearnet)
	}
	if c.OnionMap != "" {
		b, err := os.ReadFile(c.OnionMap)
		if err == nil {
			_, _, err = parseOnionMap(b)
		}
		if err != nil {
			return sdk.FieldErrorf("onion_map", "%v", err)
		}
	}
	switch c.TLS {
	case tlsNone, tlsMay, tlsRequire:
	default:
		return sdk.FieldErrorf("tls", "must be none, may or require, got %q", c.TLS)
	}
	if c.TLSVerify && c.TLS != tlsRequire {
		return sdk.FieldErrorf("tls_verify", "needs tls: require (opportunistic TLS never verifies: a failed check would only fall back to plaintext)")
	}
	if c.TLSCAFile != "" {
		if !c.TLSVerify {
			return sdk.FieldErrorf("tls_ca_file", "needs tls_verify: true")
		}
		if _, err := loadCAs(c.TLSCAFile); err != nil {
			return sdk.FieldErrorf("tls_ca_file", "%v", err)
		}
	}
	if err := checkHELO(c.HELO); err != nil {
		return sdk.FieldErrorf("helo", "%v", err)
	}
	for _, d := range []struct {
		key string
		v   sdk.Duration
	}{
		{"connect_timeout", c.ConnectTimeout}, {"command_timeout", c.CommandTimeout},
		{"data_timeout", c.DataTimeout}, {"dns_timeout", c.DNSTimeout}, {"idle_timeout", c.IdleTimeout},
	} {
		if d.v.D() < time.Second {
			return sdk.FieldErrorf(d.key, "must be at least 1s, got %s", d.v)
		}
	}
	if c.Circuits < 1 || c.Circuits > 64 {
		return sdk.FieldErrorf("circuits", "must be 1-64, got %d", c.Circuits)
	}
	if c.MaxIdle < 0 {
		return sdk.FieldErrorf("max_idle", "must be >= 0, got %d", c.MaxIdle)
	}
	return nil
}

// splitHostPort parses "host", "host:port", "[v6]" or "[v6]:port".
// defPort 0 makes the port mandatory.
func splitHostPort(s string, defPort int) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		if defPort == 0 {
			return "", 0, fmt.Errorf("want host:port, got %q", s)
		}
		host, ps = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), strconv.Itoa(defPort)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	if host == "" || strings.ContainsAny(host, " \t/@") {
		return "", 0, fmt.Errorf("bad host in %q", s)
	}
	return host, port, nil
}

// checkHELO accepts a domain name (letters, digits, hyphens, dots) or an
// address literal ("[192.0.2.1]"), per RFC 5321 §4.1.1.1.
func checkHELO(s string) error {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		lit := strings.TrimPrefix(s[1:len(s)-1], "IPv6:")
		if _, err := netip.ParseAddr(lit); err != nil {
			return fmt.Errorf("bad address literal %q", s)
		}
		return nil
	}
	if s == "" || len(s) > 253 {
		return fmt.Errorf("must be a domain name or address literal, got %q", s)
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("bad domain name %q", s)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("bad domain name %q", s)
			}
		}
	}
	return nil
}

// loadCAs reads a PEM bundle of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return p, nil
}
