package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func TestRelayDeliversHeaderAndBodyByteIdentical(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	d := newTestDeliverer(t, testConfig(f.Addr))
	m := testMessage("sender@example.org", "rcpt@example.net")
	got := deliver(t, d, m)
	wantResult(t, got, "rcpt@example.net", false, 0, "")
	msgs := f.messages()
	if len(msgs) != 1 {
		t.Fatalf("server got %d messages, want 1", len(msgs))
	}
	want := append(append([]byte(nil), m.Header...), m.Body...)
	if !bytes.Equal(msgs[0].data, want) {
		t.Fatalf("server got\n%q\nwant\n%q", msgs[0].data, want)
	}
	if msgs[0].from != "sender@example.org" || len(msgs[0].rcpts) != 1 || msgs[0].rcpts[0] != "rcpt@example.net" {
		t.Fatalf("envelope = %q %q", msgs[0].from, msgs[0].rcpts)
	}
}

func TestReplyCodesMapToPerRecipientResults(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	f.setRcpt("unknown@example.net", reply(550, "5.1.1", "<unknown@example.net>: no such user"))
	f.setRcpt("full@example.net", reply(452, "4.2.2", "mailbox full"))
	f.setRcpt("greylisted@example.net", reply(450, "", "try later"))
	f.setRcpt("mismatch@example.net", reply(550, "4.7.1", "class of enhanced code disagrees"))
	d := newTestDeliverer(t, testConfig(f.Addr))
	got := deliver(t, d, testMessage("s@example.org",
		"ok1@example.net", "unknown@example.net", "full@example.net", "greylisted@example.net", "mismatch@example.net", "ok2@example.net"))
	cases := []struct {
		rcpt      string
		temporary bool
		code      int
		enhanced  string
	}{
		{"ok1@example.net", false, 0, ""},
		{"ok2@example.net", false, 0, ""},
		{"unknown@example.net", false, 550, "5.1.1"},
		{"full@example.net", true, 452, "4.2.2"},
		{"greylisted@example.net", true, 450, "4.0.0"},
		{"mismatch@example.net", false, 550, "5.0.0"},
	}
	for _, c := range cases {
		wantResult(t, got, c.rcpt, c.temporary, c.code, c.enhanced)
	}
	msgs := f.messages()
	if len(msgs) != 1 || len(msgs[0].rcpts) != 2 {
		t.Fatalf("want one message to the 2 accepted recipients, got %+v", msgs)
	}
}

func TestMailFromRefusalDecidesForEveryRecipient(t *testing.T) {
	cases := []struct {
		name      string
		reply     error
		temporary bool
		code      int
	}{
		{"permanent", reply(553, "5.7.1", "sender rejected"), false, 553},
		{"temporary", reply(451, "4.3.0", "local error"), true, 451},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := startFakeMX(t, fakeOpts{})
			f.mail = c.reply
			d := newTestDeliverer(t, testConfig(f.Addr))
			got := deliver(t, d, testMessage("s@example.org", "a@example.net", "b@example.net"))
			wantResult(t, got, "a@example.net", c.temporary, c.code, "")
			wantResult(t, got, "b@example.net", c.temporary, c.code, "")
		})
	}
}

func TestEndOfDataRefusalHitsOnlyAcceptedRecipients(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	f.setRcpt("gone@example.net", reply(550, "5.1.1", "no such user"))
	f.data = reply(554, "5.6.0", "content rejected")
	d := newTestDeliverer(t, testConfig(f.Addr))
	got := deliver(t, d, testMessage("s@example.org", "a@example.net", "gone@example.net"))
	wantResult(t, got, "a@example.net", false, 554, "5.6.0")
	wantResult(t, got, "gone@example.net", false, 550, "5.1.1")
}

// Without pipelining the aborted transaction is cleared with RSET at once
// and the reused session checked with another; with pipelining the RSET
// leaves with the next transaction's commands.
func TestAbortedTransactionIsResetAndTheSessionReused(t *testing.T) {
	for _, c := range []struct {
		pipelining       bool
		afterAbort, next int
	}{{false, 1, 2}, {true, 0, 1}} {
		t.Run(fmt.Sprintf("pipelining=%v", c.pipelining), func(t *testing.T) {
			f := startFakeMX(t, fakeOpts{})
			f.setRcpt("a@example.net", reply(550, "5.1.1", "no"))
			cfg := testConfig(f.Addr)
			cfg.Pipelining = c.pipelining
			d := newTestDeliverer(t, cfg)
			got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
			wantResult(t, got, "a@example.net", false, 550, "5.1.1")
			if n := len(f.messages()); n != 0 {
				t.Fatalf("server got %d messages, want 0", n)
			}
			if _, rsets := f.counts(); rsets != c.afterAbort {
				t.Fatalf("%d RSET after the aborted transaction, want %d", rsets, c.afterAbort)
			}
			got = deliver(t, d, testMessage("other@example.org", "b@example.net"))
			wantResult(t, got, "b@example.net", false, 0, "")
			conns, rsets := f.counts()
			msgs := f.messages()
			if conns != 1 || rsets != c.next || len(msgs) != 1 || msgs[0].from != "other@example.org" {
				t.Fatalf("conns %d rsets %d messages %+v, want 1, %d and one from other@example.org", conns, rsets, msgs, c.next)
			}
		})
	}
}

func TestNothingListeningIsTemporary(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := newTestDeliverer(t, testConfig(addr))
	start := time.Now()
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", true, 451, "4.4.1")
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("refused connection took %s to report", el)
	}
}

func TestSilentServerTimesOutTemporarily(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // never greets
		}
	}()
	for _, policy := range []string{tlsNone, tlsMay} {
		c := testConfig(l.Addr().String())
		c.TLS = policy
		c.CommandTimeout = sdk.Duration(time.Second)
		d := newTestDeliverer(t, c)
		start := time.Now()
		got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
		wantResult(t, got, "a@example.net", true, 451, "")
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("tls %s: a silent server held the delivery %s with a 1 s command timeout", policy, el)
		}
	}
}

func TestSMTPUTF8MissingIsPermanent567(t *testing.T) {
	f := startFakeMX(t, fakeOpts{noUTF8: true})
	d := newTestDeliverer(t, testConfig(f.Addr))
	got := deliver(t, d, testMessage("s@example.org", "jürgen@example.net"))
	wantResult(t, got, "jürgen@example.net", false, 553, "5.6.7")
	m := testMessage("s@example.org", "a@example.net")
	m.Envelope.SMTPUTF8 = true
	got = deliver(t, d, m)
	wantResult(t, got, "a@example.net", false, 553, "5.6.7")
	if n := len(f.messages()); n != 0 {
		t.Fatalf("server got %d messages, want 0", n)
	}
}

func TestSMTPUTF8IsRequestedWhenOffered(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	d := newTestDeliverer(t, testConfig(f.Addr))
	got := deliver(t, d, testMessage("s@example.org", "jürgen@example.net"))
	wantResult(t, got, "jürgen@example.net", false, 0, "")
	msgs := f.messages()
	if len(msgs) != 1 || !msgs[0].opts.UTF8 || msgs[0].opts.Body != "8BITMIME" {
		t.Fatalf("want MAIL FROM with SMTPUTF8 and BODY=8BITMIME, got %+v", msgs)
	}
}

func TestSTARTTLSPolicies(t *testing.T) {
	good, _ := serverTLS(t, "127.0.0.1")
	broken := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("no certificate")
	}}
	cases := []struct {
		name      string
		server    *tls.Config
		policy    string
		delivered bool
		encrypted bool
	}{
		{"require with STARTTLS encrypts", good, tlsRequire, true, true},
		{"may with STARTTLS encrypts", good, tlsMay, true, true},
		{"none never starts TLS", good, tlsNone, true, false},
		{"require without STARTTLS fails temporarily", nil, tlsRequire, false, false},
		{"may without STARTTLS sends plaintext", nil, tlsMay, true, false},
		{"require with failed handshake fails temporarily", broken, tlsRequire, false, false},
		{"may with failed handshake retries plaintext", broken, tlsMay, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := startFakeMX(t, fakeOpts{tls: c.server})
			cfg := testConfig(f.Addr)
			cfg.TLS = c.policy
			d := newTestDeliverer(t, cfg)
			got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
			if !c.delivered {
				wantResult(t, got, "a@example.net", true, 451, "4.7.10")
				if n := len(f.messages()); n != 0 {
					t.Fatalf("server got %d messages, want 0", n)
				}
				return
			}
			wantResult(t, got, "a@example.net", false, 0, "")
			msgs := f.messages()
			if len(msgs) != 1 || msgs[0].tls != c.encrypted {
				t.Fatalf("want 1 message with tls=%v, got %+v", c.encrypted, msgs)
			}
		})
	}
}

func TestVerifyChecksCertificateAgainstConfiguredCA(t *testing.T) {
	srvTLS, cert := serverTLS(t, "127.0.0.1")
	_, other := serverTLS(t, "127.0.0.1")
	f := startFakeMX(t, fakeOpts{tls: srvTLS})
	for _, c := range []struct {
		name      string
		ca        []byte
		delivered bool
	}{
		{"right CA", cert.CertPEM, true},
		{"wrong CA", other.CertPEM, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, c.ca, 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(f.Addr)
			cfg.TLS, cfg.TLSVerify, cfg.TLSCAFile = tlsRequire, true, ca
			d := newTestDeliverer(t, cfg)
			got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
			if c.delivered {
				wantResult(t, got, "a@example.net", false, 0, "")
			} else {
				wantResult(t, got, "a@example.net", true, 451, "4.7.10")
			}
		})
	}
}

func TestHELOIsTheConfiguredNameNeverLocalhost(t *testing.T) {
	srvTLS, _ := serverTLS(t, "127.0.0.1")
	f := startFakeMX(t, fakeOpts{tls: srvTLS})
	cfg := testConfig(f.Addr)
	d := newTestDeliverer(t, cfg)
	deliver(t, d, testMessage("s@example.org", "a@example.net"))
	cfg.HELO = "exit.example.org"
	cfg.TLS = tlsNone
	d = newTestDeliverer(t, cfg)
	deliver(t, d, testMessage("s@example.org", "a@example.net"))
	f.mu.Lock()
	helos := append([]string(nil), f.helos...)
	f.mu.Unlock()
	// First deliverer: EHLO before and after STARTTLS; second: plaintext.
	want := []string{"mixmta.invalid", "mixmta.invalid", "exit.example.org"}
	if fmt.Sprint(helos) != fmt.Sprint(want) {
		t.Fatalf("EHLO names = %q, want %q", helos, want)
	}
}

func TestConnectionIsReusedAcrossMessages(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	d := newTestDeliverer(t, testConfig(f.Addr))
	for i := 0; i < 3; i++ {
		got := deliver(t, d, testMessage("s@example.org", fmt.Sprintf("r%d@example.net", i)))
		wantResult(t, got, fmt.Sprintf("r%d@example.net", i), false, 0, "")
		wantIdle(t, d, f.Addr, 1)
	}
	// A pooled session is RSET before each reuse.
	conns, rsets := f.counts()
	if conns != 1 || rsets != 2 {
		t.Fatalf("3 messages used %d connections and %d RSET, want 1 and 2", conns, rsets)
	}
	if n := len(f.messages()); n != 3 {
		t.Fatalf("server got %d messages, want 3", n)
	}
}

func TestMaxIdleZeroOpensAConnectionPerMessage(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	cfg := testConfig(f.Addr)
	cfg.MaxIdle = 0
	d := newTestDeliverer(t, cfg)
	for i := 0; i < 3; i++ {
		deliver(t, d, testMessage("s@example.org", "a@example.net"))
	}
	if conns, _ := f.counts(); conns != 3 {
		t.Fatalf("3 messages used %d connections, want 3", conns)
	}
}

func TestDeadPooledConnectionIsRedialledTransparently(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	d := newTestDeliverer(t, testConfig(f.Addr))
	deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantIdle(t, d, f.Addr, 1)
	f.dropAll()
	got := deliver(t, d, testMessage("s@example.org", "b@example.net"))
	wantResult(t, got, "b@example.net", false, 0, "")
	if conns, _ := f.counts(); conns != 2 {
		t.Fatalf("used %d connections, want 2", conns)
	}
}

func TestIdleSessionsExpire(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	cfg := testConfig(f.Addr)
	cfg.IdleTimeout = sdk.Duration(time.Second)
	d := newTestDeliverer(t, cfg)
	deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantIdle(t, d, f.Addr, 1)
	time.Sleep(1500 * time.Millisecond)
	if n := d.pool.idleCount(f.Addr); n != 0 {
		t.Fatalf("%d idle sessions after the idle timeout, want 0", n)
	}
	deliver(t, d, testMessage("s@example.org", "a@example.net"))
	if conns, _ := f.counts(); conns != 2 {
		t.Fatalf("used %d connections, want 2", conns)
	}
}

func TestConcurrentDeliveriesShareThePoolSafely(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	cfg := testConfig(f.Addr)
	cfg.MaxIdle = 4
	d := newTestDeliverer(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				res, err := d.Deliver(deliverCtx(t), testMessage("s@example.org", "a@example.net"))
				if err == nil && (len(res) != 1 || res[0].Err != nil) {
					err = fmt.Errorf("results %v", res)
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	conns, _ := f.counts()
	if n := len(f.messages()); n != 200 {
		t.Fatalf("server got %d messages, want 200", n)
	}
	if conns >= 200 {
		t.Fatalf("200 messages used %d connections: no reuse", conns)
	}
	t.Logf("200 messages from 10 workers over %d connections", conns)
}

func TestMalformedRecipientIsPermanentAndOthersStillGo(t *testing.T) {
	f := startFakeMX(t, fakeOpts{})
	d := newTestDeliverer(t, testConfig(f.Addr))
	got := deliver(t, d, testMessage("s@example.org", "nodomain", "a@example.net", "a@example.net"))
	wantResult(t, got, "nodomain", false, 553, "5.1.3")
	wantResult(t, got, "a@example.net", false, 0, "")
	if msgs := f.messages(); len(msgs) != 1 || len(msgs[0].rcpts) != 1 {
		t.Fatalf("want one message to one recipient (duplicates merged), got %+v", msgs)
	}
}

// wantIdle checks that the pool holds n idle sessions for key: a session
// goes back as soon as its transaction ends.
func wantIdle(t *testing.T, d *deliverer, key string, n int) {
	t.Helper()
	if got := d.pool.idleCount(key); got != n {
		t.Fatalf("pool holds %d idle sessions for %s, want %d", got, key, n)
	}
}
