package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/onion"
)

// onionPort is the SMTP port of an onion MX found by a literal .onion
// domain or the static map (which carry no port): SMTorP and onionmx
// publish SMTP on the onion service's port 25.
const onionPort = 25

// Clearnet policies: what happens to a domain with no onion route.
const (
	clearnetRefuse = "refuse" // permanent failure (default with socks5)
	clearnetTor    = "tor"    // MX delivery through a Tor exit (needs socks5)
	clearnetDirect = "direct" // MX delivery without Tor (default without socks5)
)

// miss is returned by a resolver that does not handle a domain but has
// something to say about why (e.g. an SRV record whose target is not a
// valid v3 onion); the chain goes on and puts the reason into its final
// error.
type miss string

func (m miss) Error() string { return string(m) }

// literalOnion handles a recipient domain that is itself an onion address
// ("user@<56 chars>.onion"): delivered to that onion service's port 25.
// v2 and malformed (wrong checksum or version) addresses are permanent
// failures.
type literalOnion struct{}

func (literalOnion) resolve(_ context.Context, domain string) ([]target, bool, error) {
	if !onion.IsOnion(domain) {
		return nil, false, nil
	}
	host, _, err := onion.Parse(domain)
	if err != nil {
		return nil, true, sdk.Permanent(550, "5.1.2", "onionmx: literal onion recipient domain: %v", err)
	}
	return []target{{host: host, port: onionPort}}, true, nil
}

// onionMap is the static map in onionmx's map.yml format (a YAML mapping:
// onion host name -> list of domains), read as published and re-read
// when the file changes (checked at most once per second). Entries whose
// onion is v2 or malformed are skipped and counted; a file that no longer
// parses keeps the last good map.
type onionMap struct {
	path  string
	log   hclog.Logger
	every time.Duration // minimum time between checks of the file

	mu      sync.Mutex
	checked time.Time
	mod     time.Time
	size    int64
	domains map[string][]string // domain -> onions, in file order
}

func newOnionMap(path string, log hclog.Logger) (*onionMap, error) {
	m := &onionMap{path: path, log: log, every: time.Second}
	if err := m.load(); err != nil {
		return nil, err
	}
	return m, nil
}

// load reads the file unconditionally.
func (m *onionMap) load() error {
	fi, err := os.Stat(m.path)
	if err != nil {
		return fmt.Errorf("onion map: %w", err)
	}
	b, err := os.ReadFile(m.path)
	if err != nil {
		return fmt.Errorf("onion map: %w", err)
	}
	domains, skipped, err := parseOnionMap(b)
	if err != nil {
		return fmt.Errorf("onion map %s: %w", m.path, err)
	}
	m.domains, m.mod, m.size = domains, fi.ModTime(), fi.Size()
	m.log.Info("onion map loaded", "domains", len(domains), "skipped_onions", skipped)
	return nil
}

// parseOnionMap decodes map.yml. skipped counts onions that are not valid
// v3 addresses (the published file still lists v2 onions).
func parseOnionMap(b []byte) (map[string][]string, int, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, 0, err
	}
	out := map[string][]string{}
	if len(root.Content) == 0 {
		return out, 0, nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, 0, fmt.Errorf("line %d: want a mapping of onion -> list of domains", doc.Line)
	}
	skipped := 0
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		host, _, err := onion.Parse(k.Value)
		if err != nil {
			skipped++
			continue
		}
		switch {
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			continue // an onion without domains
		case v.Kind != yaml.SequenceNode:
			return nil, 0, fmt.Errorf("line %d: the domains of %s must be a list", v.Line, k.Value)
		}
		for _, d := range v.Content {
			if d.Kind != yaml.ScalarNode {
				return nil, 0, fmt.Errorf("line %d: a domain must be a string", d.Line)
			}
			dom := strings.ToLower(strings.TrimSuffix(d.Value, "."))
			if dom != "" && !slices.Contains(out[dom], host) {
				out[dom] = append(out[dom], host)
			}
		}
	}
	return out, skipped, nil
}

// refresh re-reads the file if its modification time or size changed.
func (m *onionMap) refresh() {
	if time.Since(m.checked) < m.every {
		return
	}
	m.checked = time.Now()
	fi, err := os.Stat(m.path)
	if err != nil {
		m.log.Warn("onion map unreadable; keeping the last one", "error", err)
		return
	}
	if fi.ModTime().Equal(m.mod) && fi.Size() == m.size {
		return
	}
	if err := m.load(); err != nil {
		m.log.Warn("onion map changed but does not load; keeping the last one", "error", err)
	}
}

func (m *onionMap) resolve(_ context.Context, domain string) ([]target, bool, error) {
	m.mu.Lock()
	m.refresh()
	onions := m.domains[domain]
	m.mu.Unlock()
	if len(onions) == 0 {
		return nil, false, nil
	}
	ts := make([]target, len(onions))
	for i, o := range onions {
		ts[i] = target{host: o, port: onionPort}
	}
	return ts, true, nil
}

// srvResolver looks up _onion-mx._tcp.DOMAIN (the onionmx convention)
// over DNS through Tor. Only targets that are valid v3 onions count; their
// port is used. Records are ordered by priority, equal priorities
// shuffled. No record (or NXDOMAIN) passes the domain on.
type srvResolver struct{ dns *dnsClient }

func (r srvResolver) resolve(ctx context.Context, domain string) ([]target, bool, error) {
	resp, err := r.dns.query(ctx, domain, "_onion-mx._tcp."+domain, dns.TypeSRV)
	if sdk.IsPermanent(err) {
		return nil, false, nil // NXDOMAIN: no SRV record
	}
	if err != nil {
		var e *sdk.Error
		if errors.As(err, &e) {
			return nil, true, sdk.Temporary(451, "4.4.3", "onionmx: SRV _onion-mx lookup (through Tor): %s", strings.TrimPrefix(e.Message, "onionmx: "))
		}
		return nil, true, err
	}
	var srvs []*dns.SRV
	bad := 0
	for _, rr := range resp.Answer {
		s, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		if _, _, err := onion.Parse(s.Target); err != nil || s.Port == 0 {
			bad++
			continue
		}
		srvs = append(srvs, s)
	}
	if len(srvs) == 0 {
		if bad > 0 {
			return nil, false, miss("its _onion-mx SRV target is not a valid v3 onion")
		}
		return nil, false, nil
	}
	rand.Shuffle(len(srvs), func(i, j int) { srvs[i], srvs[j] = srvs[j], srvs[i] })
	slices.SortStableFunc(srvs, func(a, b *dns.SRV) int { return cmp.Compare(a.Priority, b.Priority) })
	var ts []target
	for _, s := range srvs {
		host, _, _ := onion.Parse(s.Target)
		ts = append(ts, target{host: host, port: int(s.Port)})
		if len(ts) == maxHosts {
			break
		}
	}
	return ts, true, nil
}

// refuseClearnet ends the chain when the policy refuses clearnet MX;
// tried names the onion steps that found nothing.
type refuseClearnet struct{ tried string }

func (refuseClearnet) resolve(context.Context, string) ([]target, bool, error) {
	return nil, true, nil
}

// err is the final error, with what the onion steps noted.
func (r refuseClearnet) err(notes []string) error {
	why := r.tried
	if len(notes) > 0 {
		why += "; " + strings.Join(notes, "; ")
	}
	return sdk.Permanent(550, "5.7.1", "onionmx: no onion route for the recipient domain (%s), and clearnet delivery is refused by policy (clearnet: refuse; Tor exits mostly block port 25)", why)
}
