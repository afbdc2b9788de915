package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

const policyConfig = `
hostname: mx.test.invalid
listeners:
  - name: inbound
    address: %s
    local_domains: [example.net]
  - name: submission
    address: %s
    max_message_bytes: 20000
    max_recipients: 3
    relay:
      networks: [127.0.0.1/32]
      destination_block_file: %s
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`

// session is a raw SMTP dialogue from a chosen local address.
type session struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialFrom(t *testing.T, addr, local string) *session {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &session{t: t, c: c, r: bufio.NewReader(c)}
	s.expect("", "220")
	s.expect("EHLO client.example.org", "250")
	return s
}

// expect sends cmd (unless empty) and checks the final reply line starts
// with want (e.g. "550 5.7.1"). It returns the reply.
func (s *session) expect(cmd, want string) string {
	s.t.Helper()
	s.c.SetDeadline(time.Now().Add(30 * time.Second))
	if cmd != "" {
		fmt.Fprintf(s.c, "%s\r\n", cmd)
	}
	var reply []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("after %q: %v (reply so far %q)", cmd, err, reply)
		}
		reply = append(reply, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	last := reply[len(reply)-1]
	if !strings.HasPrefix(last, want) {
		s.t.Fatalf("after %q: got %q, want %q", cmd, last, want)
	}
	return strings.Join(reply, "\n")
}

func policyNode(t *testing.T) (in, sub string, sink *peers.SinkPeer) {
	t.Helper()
	sink = peers.SmtpSink(t)
	in, sub = freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	block := filepath.Join(dir, "dest.blk")
	if err := os.WriteFile(block, []byte("# opt-out list\nblocked@example.com\n@optout.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, data := profile(t, fmt.Sprintf(policyConfig, in, sub, block, sink.Addr), nil)
	startNode(t, cfg, data, in)
	return in, sub, sink
}

func TestRelayPolicyAndLimits(t *testing.T) {
	in, sub, sink := policyNode(t)

	t.Run("local-only listener refuses relaying with 5.7.1", func(t *testing.T) {
		s := dialFrom(t, in, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<x@example.com>", "550 5.7.1")
		s.expect("RCPT TO:<local@example.net>", "250")
	})
	t.Run("client network not allowed is refused with 5.7.1", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.2")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<x@example.com>", "550 5.7.1")
	})
	t.Run("allowed network may relay", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<x@example.com>", "250")
	})
	t.Run("blocked destination is refused", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<Blocked@Example.com>", "550 5.7.1")
		s.expect("RCPT TO:<anyone@optout.example>", "550 5.7.1")
	})
	t.Run("oversize is refused 552 5.3.4 at MAIL SIZE and at DATA", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org> SIZE=50000", "552 5.3.4")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<x@example.com>", "250")
		s.expect("DATA", "354")
		fmt.Fprintf(s.c, "Subject: big\r\n\r\n%s\r\n.\r\n", strings.Repeat(strings.Repeat("y", 98)+"\r\n", 300))
		s.expect("", "552 5.3.4")
	})
	t.Run("too many recipients 452 4.5.3", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org>", "250")
		for i := 0; i < 3; i++ {
			s.expect(fmt.Sprintf("RCPT TO:<r%d@example.com>", i), "250")
		}
		s.expect("RCPT TO:<r3@example.com>", "452 4.5.3")
	})
	t.Run("malformed commands", func(t *testing.T) {
		s := dialFrom(t, sub, "127.0.0.1")
		// go-smtp's replies: 501/502 5.5.x for unknown or mangled commands
		// and commands out of sequence; the class is what clients act on.
		s.expect("FROBNICATE", "50")
		s.expect("FROB x", "50")
		s.expect("RCPT TO:<x@example.com>", "50")
		s.expect("MAIL FROM:<unterminated", "50")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<no-domain>", "501")
		s.expect("RCPT TO:<user@bad..domain>", "553 5.1.3")
		s.expect("RCPT TO:<a b@example.com>", "5")
		s.expect("DATA", "5") // no valid recipients
	})
	t.Run("header bomb refused cleanly", func(t *testing.T) {
		s := dialFrom(t, in, "127.0.0.1")
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<local@example.net>", "250")
		s.expect("DATA", "354")
		w := bufio.NewWriter(s.c)
		for i := 0; i < 12000; i++ {
			fmt.Fprintf(w, "X-Bomb-%d: %s\r\n", i, strings.Repeat("b", 90))
		}
		fmt.Fprintf(w, "\r\nbody\r\n.\r\n")
		w.Flush()
		s.expect("", "552 5.3.4")
		s.expect("NOOP", "250") // the session survives
	})
	if sink.Count() != 0 {
		t.Errorf("refused mail reached the sink: %d messages", sink.Count())
	}
}

// TestCheckConfigReportsFileAndLine: bad YAML, unknown keys and bad stage
// configs fail `mixmta check-config` with FILE:LINE.
func TestCheckConfigReportsFileAndLine(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"yaml syntax", "listeners:\n  - name: a\n    address: [unclosed\n", ":3"},
		{"unknown top-level key", "listners: []\n", ":1: unknown key \"listners\""},
		{"unknown stage config key", "listeners:\n  - {name: a, address: '127.0.0.1:0'}\npipeline:\n  - name: d\n    plugin: onionmx\n    config:\n      relay_host: 127.0.0.1:25\n      colour: blue\n", ":8"},
		{"wrong type in stage config", "listeners:\n  - {name: a, address: '127.0.0.1:0'}\npipeline:\n  - name: delay\n    plugin: delay-exponential\n    config:\n      mean: fast\n  - name: d\n    plugin: onionmx\n    config: {relay_host: '127.0.0.1:25'}\n", ":7"},
		{"missing plugin", "listeners:\n  - {name: a, address: '127.0.0.1:0'}\npipeline:\n  - name: d\n    plugin: no-such-plugin\n", ":4"},
		{"plugin validation names the key", "listeners:\n  - {name: a, address: '127.0.0.1:0'}\npipeline:\n  - name: delay\n    plugin: delay-exponential\n    config:\n      mean: 1m\n      min: 1h\n      max: 1m\n  - name: d\n    plugin: onionmx\n    config: {relay_host: '127.0.0.1:25'}\n", ":"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "bad.yaml")
			text := "plugin_dir: " + binDir + "\ndata_dir: " + dir + "/data\n" + c.yaml
			os.WriteFile(cfg, []byte(text), 0o600)
			out, err := mixmtaCommand(t, "check-config", "-c", cfg).CombinedOutput()
			if err == nil {
				t.Fatalf("check-config accepted a bad config:\n%s", out)
			}
			// the two prepended lines shift the YAML's line numbers by 2
			want := c.want
			if strings.HasPrefix(want, ":") && len(want) > 1 {
				var ln int
				var rest string
				if n, _ := fmt.Sscanf(want, ":%d%s", &ln, &rest); n >= 1 {
					want = fmt.Sprintf(":%d", ln+2) + strings.TrimPrefix(want, fmt.Sprintf(":%d", ln))
				}
			}
			if !strings.Contains(string(out), cfg+want) {
				t.Fatalf("want an error at %s%s, got:\n%s", cfg, want, out)
			}
		})
	}
}
