package peers

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPostfixDeliversSwaksMessageOverStartTLSToMaildir(t *testing.T) {
	start := time.Now()
	p := Postfix(t)
	t.Logf("postfix ready in %s at %s", time.Since(start), p.Addr)
	// swaks ends the data with CRLF itself: the file has no final CRLF.
	msg := "From: a@example.org\r\nTo: b@example.net\r\nSubject: peer test\r\n\r\n.leading dot\r\nline two"
	code, out := Swaks(t, "--server", p.Addr, "--tls", "--from", "a@example.org", "--to", "b@example.net",
		"--data", "@"+writeFile(t, "msg.eml", []byte(msg)))
	if code != 0 {
		t.Fatalf("swaks exit %d, want 0\n%s", code, out)
	}
	files := p.WaitMessages(t, 1, 10*time.Second)
	if len(files) != 1 {
		t.Fatalf("got %d Maildir files, want 1", len(files))
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := bytes.Cut(b, []byte("\n\n"))
	if want := ".leading dot\nline two\n"; string(body) != want {
		t.Fatalf("Maildir body = %q, want %q", body, want)
	}
	if !bytes.Contains(b, []byte("Delivered-To: b@example.net\n")) {
		t.Fatalf("Maildir file lacks Delivered-To of the recipient:\n%s", b)
	}
	if !strings.Contains(p.Log(), "Anonymous TLS connection established") && !strings.Contains(p.Log(), "TLS connection established") {
		t.Fatalf("maillog shows no TLS session:\n%s", p.Log())
	}
}

func TestPostfixRefusesUnknownDomainAtRcpt(t *testing.T) {
	p := Postfix(t)
	code, out := Swaks(t, "--server", p.Addr, "--from", "a@example.org", "--to", "b@elsewhere.test")
	if code != 24 {
		t.Fatalf("swaks exit %d, want 24 (RCPT refused)\n%s", code, out)
	}
	if !strings.Contains(out, "554 5.7.1") {
		t.Fatalf("want 554 5.7.1 relay denied, got:\n%s", out)
	}
}

func TestSmtpSinkDumpsEnvelopeAndMessage(t *testing.T) {
	s := SmtpSink(t)
	msg := "Subject: sink\r\n\r\n..two dots\r\nend"
	code, out := Swaks(t, "--server", s.Addr, "--from", "a@example.org", "--to", "b@example.net,c@example.net",
		"--data", "@"+writeFile(t, "msg.eml", []byte(msg)))
	if code != 0 {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	if !s.WaitCount(1, 5*time.Second) {
		t.Fatalf("no dump file after 5 s")
	}
	ms, err := s.Messages()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("got %d messages, want 1", len(ms))
	}
	m := ms[0]
	if m.MailFrom() != "a@example.org" {
		t.Errorf("MAIL FROM = %q, want a@example.org", m.MailFrom())
	}
	if got, want := m.RcptTo(), []string{"b@example.net", "c@example.net"}; !slices.Equal(got, want) {
		t.Errorf("RCPT TO = %q, want %q", got, want)
	}
	// swaks sends the file as is: the dump is the message, LF endings.
	if want := strings.ReplaceAll(msg, "\r\n", "\n") + "\n"; !strings.HasSuffix(string(m.Data), want) {
		t.Errorf("data = %q, want it to end with %q", m.Data, want)
	}
}

func TestParseSinkDumpStripsSinkReceivedField(t *testing.T) {
	dump := "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: x\nX-Mail-Args: <a@b> BODY=8BITMIME\n" +
		"X-Rcpt-Args: <c@d>\nX-Rcpt-Args: <e@f>\nReceived: from x ([127.0.0.1])\n\tby smtp-sink (smtp-sink) with ESMTP id 5e;\n" +
		"\tSat, 21 Nov 2026 06:23:54 +0000 (UTC)\nSubject: hi\n\n.dot\nbody\n\n"
	m, err := ParseSinkDump([]byte(dump))
	if err != nil {
		t.Fatal(err)
	}
	if m.MailArgs != "<a@b> BODY=8BITMIME" || !slices.Equal(m.RcptTo(), []string{"c@d", "e@f"}) {
		t.Errorf("envelope = %q %q", m.MailArgs, m.RcptArgs)
	}
	if want := "Subject: hi\n\n.dot\nbody\n"; string(m.Data) != want {
		t.Errorf("data = %q, want %q", m.Data, want)
	}
	if _, err := ParseSinkDump([]byte("Subject: x\n\n")); err == nil {
		t.Errorf("a dump without X-Mail-Args parsed without error")
	}
}

func TestSmtpSourceDeliversCountMessagesToSink(t *testing.T) {
	s := SmtpSink(t)
	el, err := SmtpSource(t, s.Addr, SourceOptions{Sessions: 4, Size: 1024, Count: 200, From: "a@example.org", To: "b@example.net", Reuse: true})
	if err != nil {
		t.Fatal(err)
	}
	if !s.WaitCount(200, 5*time.Second) {
		t.Fatalf("sink holds %d messages, want 200", s.Count())
	}
	t.Logf("smtp-source: 200 x 1 KiB in %s", el)
}

func TestDnsmasqAnswersMXAAndSRVOverTCP(t *testing.T) {
	onion := strings.Repeat("a", 56) + ".onion"
	d := Dnsmasq(t, DNSRecords{
		Hosts: map[string][]string{"mx1.example.org": {"127.0.0.1"}, "mx2.example.org": {"127.0.0.2"}},
		MX:    []MX{{"example.org", "mx2.example.org", 20}, {"example.org", "mx1.example.org", 10}},
		SRV:   []SRV{{Name: "_onion-mx._tcp.example.org", Target: onion, Port: 25, Priority: 0, Weight: 5}},
	})
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	ask := func(name string, qt uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qt)
		r, _, err := c.Exchange(m, d.Addr)
		if err != nil {
			t.Fatalf("query %s %s: %v", name, dns.TypeToString[qt], err)
		}
		return r
	}
	r := ask("example.org", dns.TypeMX)
	var mx []string
	for _, rr := range r.Answer {
		if m, ok := rr.(*dns.MX); ok {
			mx = append(mx, m.Mx)
		}
	}
	slices.Sort(mx)
	if want := []string{"mx1.example.org.", "mx2.example.org."}; !slices.Equal(mx, want) {
		t.Fatalf("MX = %q, want %q", mx, want)
	}
	r = ask("mx1.example.org", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("A mx1 = %v, want 127.0.0.1", r.Answer)
	}
	r = ask("_onion-mx._tcp.example.org", dns.TypeSRV)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Target != onion+"." || r.Answer[0].(*dns.SRV).Port != 25 {
		t.Fatalf("SRV = %v, want %s port 25", r.Answer, onion)
	}
	if r = ask("nothing.example.org", dns.TypeMX); r.Rcode != dns.RcodeNameError {
		t.Fatalf("rcode for a missing name in the zone = %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if r = ask("example.com", dns.TypeMX); r.Rcode != dns.RcodeRefused {
		t.Fatalf("rcode outside the zone = %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}
