package peers

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNSRecords are the records a test DNS server answers for.
type DNSRecords struct {
	// Hosts map a name to its addresses (A/AAAA; host-record=).
	Hosts map[string][]string
	// MX records (mx-host=).
	MX []MX
	// SRV records (srv-host=).
	SRV []SRV
	// TXT records: name -> text (txt-record=).
	TXT map[string]string
	// Zones the server is authoritative for (local=/zone/): names inside
	// without a record get NXDOMAIN or an empty answer; names outside get
	// REFUSED. Default: the last two labels of every name above.
	Zones []string
	// Extra are raw dnsmasq.conf lines.
	Extra []string
}

// MX is one MX record: Domain's mail goes to Host with Pref.
type MX struct {
	Domain string
	Host   string
	Pref   int
}

// SRV is one SRV record, e.g. Name "_onion-mx._tcp.example.org".
type SRV struct {
	Name     string
	Target   string
	Port     int
	Priority int
	Weight   int
}

// DNSPeer is a running dnsmasq answering DNSRecords on UDP and TCP.
type DNSPeer struct {
	// Addr is "127.0.0.1:port" (UDP and TCP).
	Addr string
	proc *process
}

// Dnsmasq starts dnsmasq (package dnsmasq-base, installed if missing) as an
// authoritative server for records on a free 127.0.0.1 port, without
// upstream servers, /etc/hosts or DHCP. It is ready when it answers a query
// (about 30 ms) and is stopped when the test ends.
func Dnsmasq(t testing.TB, records DNSRecords) *DNSPeer {
	t.Helper()
	Ensure(t, "dnsmasq", "dnsmasq-base")
	lines, err := dnsmasqConf(records)
	if err != nil {
		t.Fatalf("peers: dnsmasq: %v", err)
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		dir := peerDir(t, "dnsmasq")
		port := FreePort(t)
		conf := append([]string{
			fmt.Sprintf("port=%d", port),
			"listen-address=127.0.0.1",
			"bind-interfaces",
			"no-resolv",
			"no-hosts",
			"no-poll",
			"user=nobody",
			"pid-file=",
			"log-facility=-",
		}, lines...)
		file := filepath.Join(dir, "dnsmasq.conf")
		if err := os.WriteFile(file, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
			t.Fatalf("peers: %v", err)
		}
		p, err := startProcess("dnsmasq", lookBin("dnsmasq"),
			[]string{"--keep-in-foreground", "--conf-file=" + file}, filepath.Join(dir, "dnsmasq.out"), nil, true)
		if err != nil {
			t.Fatalf("peers: %v", err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if err := waitDNS(p, addr, 5*time.Second); err != nil {
			p.stop(syscall.SIGTERM, time.Second)
			last = err
			continue
		}
		t.Cleanup(func() { p.stop(syscall.SIGTERM, 2*time.Second) })
		return &DNSPeer{Addr: addr, proc: p}
	}
	t.Fatalf("peers: dnsmasq: %v", last)
	return nil
}

func dnsmasqConf(r DNSRecords) ([]string, error) {
	var lines []string
	zones := map[string]bool{}
	var names []string
	for name, addrs := range r.Hosts {
		if len(addrs) == 0 {
			return nil, fmt.Errorf("host %s without addresses", name)
		}
		lines = append(lines, "host-record="+name+","+strings.Join(addrs, ","))
		names = append(names, name)
	}
	for _, m := range r.MX {
		lines = append(lines, fmt.Sprintf("mx-host=%s,%s,%d", m.Domain, m.Host, m.Pref))
		names = append(names, m.Domain)
	}
	for _, s := range r.SRV {
		lines = append(lines, fmt.Sprintf("srv-host=%s,%s,%d,%d,%d", s.Name, s.Target, s.Port, s.Priority, s.Weight))
		names = append(names, s.Name)
	}
	for name, txt := range r.TXT {
		if strings.ContainsAny(txt, "\"\n") {
			return nil, fmt.Errorf("TXT %s: quotes and newlines not supported", name)
		}
		lines = append(lines, fmt.Sprintf("txt-record=%s,\"%s\"", name, txt))
		names = append(names, name)
	}
	if len(r.Zones) == 0 {
		for _, n := range names {
			labels := dns.SplitDomainName(n)
			if len(labels) >= 2 {
				zones[strings.Join(labels[len(labels)-2:], ".")] = true
			}
		}
	}
	for _, z := range r.Zones {
		zones[strings.Trim(z, ".")] = true
	}
	for z := range zones {
		lines = append(lines, "local=/"+z+"/")
	}
	return append(lines, r.Extra...), nil
}

// waitDNS queries addr over UDP until dnsmasq answers anything.
func waitDNS(p *process, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("ready.invalid.", dns.TypeA)
	var last error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("dnsmasq exited early: %v\n%s", p.err, p.logTail(3000))
		}
		if _, _, err := c.Exchange(m, addr); err == nil {
			return nil
		} else {
			last = err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("dnsmasq not ready on %s after %s: %v\n%s", addr, timeout, last, p.logTail(3000))
}
