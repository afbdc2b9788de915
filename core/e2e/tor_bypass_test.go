package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mixmta/mixmta/internal/peers"
)

// owners records which local process opened each connection a test
// server accepted (peers.ConnOwner).
type owners struct {
	mu  sync.Mutex
	got []string
}

func (o *owners) add(c net.Conn) {
	comm, _, err := peers.ConnOwner(c)
	if err != nil {
		comm = "unknown (" + err.Error() + ")"
	}
	o.mu.Lock()
	o.got = append(o.got, comm)
	o.mu.Unlock()
}

func (o *owners) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.got...)
}

// recordingProxy forwards every connection to target and records who
// opened it.
func recordingProxy(t *testing.T, target string) (string, *owners) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	o := &owners{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			o.add(c)
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
	return l.Addr().String(), o
}

// recordingDNS is a DNS server over TCP answering the SRV records in rrs
// (NXDOMAIN for anything else) and recording who connected.
func recordingDNS(t *testing.T, rrs []string) (string, *owners) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &owners{}
	srv := &dns.Server{Listener: recordingListener{l, o}, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, line := range rrs {
			rr, err := dns.NewRR(line)
			if err == nil && strings.EqualFold(rr.Header().Name, r.Question[0].Name) && rr.Header().Rrtype == r.Question[0].Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return l.Addr().String(), o
}

type recordingListener struct {
	net.Listener
	o *owners
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.o.add(c)
	}
	return c, err
}

// TestNothingBypassesTor: with a tor: section, every TCP connection and
// every DNS query of the gateway (core and onionmx plugin) is made by a tor
// process: the SRV lookup, delivery to the onion service it names, and
// clearnet delivery through an exit (clearnet: tor) to an address literal,
// and cover messages (a cover: section) to a sink found by SRV.
// The servers identify the process that opened each connection from
// /proc; the negative control shows a direct connection is seen as such.
func TestNothingBypassesTor(t *testing.T) {
	tn := peers.Tor(t)
	sink := peers.SmtpSink(t)
	smtpAddr, smtpOwners := recordingProxy(t, sink.Addr)
	onion := tn.AddOnion(t, 25, smtpAddr)
	dnsAddr, dnsOwners := recordingDNS(t, []string{"_onion-mx._tcp.srv.example. 60 IN SRV 0 5 25 " + onion + "."})
	sub := freeAddr(t)
	port := smtpAddr[strings.LastIndex(smtpAddr, ":")+1:]
	cfg, data := profile(t, fmt.Sprintf(`log: {level: info}
scheduler: {window: 200ms}
listeners:
  - name: submission
    address: %s
    relay: {networks: [127.0.0.1/32]}
pipeline:
  - name: deliver
    plugin: onionmx
    config: {resolver: "%s", clearnet: tor, port: %s, tls: none}
tor:
  socks_address: %s
cover: {interval: 500ms, to: [cover@srv.example], min_size: 512, max_size: 2048}
`, sub, dnsAddr, port, tn.SocksAddr), nil)
	n := startNode(t, cfg, data, sub)
	for _, rcpt := range []string{"a@srv.example", "b@[127.0.0.1]"} {
		if err := sendRaw(sub, "s@example.org", []string{rcpt}, []byte("Subject: t\r\n\r\nbody\r\n"), false); err != nil {
			t.Fatalf("submit to %s: %v", rcpt, err)
		}
	}
	// The two real messages, and cover beside them.
	var real, cover int
	deadline := time.Now().Add(2 * time.Minute)
	for real < 2 || cover == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sink got %d real messages (want 2) and %d cover (want some)\n%s", real, cover, tailLines(n.log(), 20))
		}
		time.Sleep(200 * time.Millisecond)
		msgs, err := sink.Messages()
		if err != nil {
			continue
		}
		real, cover = 0, 0
		for _, m := range msgs {
			if strings.Join(m.RcptArgs, ",") == "<cover@srv.example>" {
				cover++
			} else {
				real++
			}
		}
	}
	if real != 2 {
		t.Fatalf("sink got %d real messages, want 2", real)
	}
	for what, o := range map[string]*owners{"SMTP": smtpOwners, "DNS": dnsOwners} {
		got := o.list()
		if len(got) == 0 {
			t.Fatalf("no %s connection recorded", what)
		}
		for _, comm := range got {
			if comm != "tor" {
				t.Errorf("%s connection opened by %q, not by tor: it bypassed Tor (all: %v)", what, comm, got)
			}
		}
	}
	// Negative control: a connection that does not go through Tor is seen
	// (cover keeps going meanwhile: look for it among the new ones).
	n0 := len(smtpOwners.list())
	c, err := net.Dial("tcp", smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline = time.Now().Add(5 * time.Second)
	for {
		got := smtpOwners.list()
		seen := false
		for _, comm := range got[n0:] {
			seen = seen || comm != "tor"
		}
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a direct connection was attributed to tor: %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
