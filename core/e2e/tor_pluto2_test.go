package e2e

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// switchable forwards connections to target while up; while down it
// closes them at once (an onion service whose MTA is down).
func switchable(t *testing.T, target string) (string, *atomic.Bool, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	up, refused := new(atomic.Bool), new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !up.Load() {
				refused.Add(1)
				c.Close()
				continue
			}
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
	return l.Addr().String(), up, refused
}

// TestPluto2RetriesOnionWhileDownAndPads: configs/pluto2.yaml (with its
// window and retry base shortened) takes mail through its onion service,
// delivers to a literal .onion through Tor, keeps retrying while that
// service's MTA is down, delivers when it is back, and every delivered
// message is a multiple of 8 KiB with its body intact.
func TestPluto2RetriesOnionWhileDownAndPads(t *testing.T) {
	tn := peers.Tor(t)
	sink := peers.SmtpSink(t)
	front, up, refused := switchable(t, sink.Addr)
	dest := tn.AddOnion(t, 25, front)
	in := freeAddr(t)
	cfg, data := profile(t, "configs/pluto2.yaml", map[string]any{
		"listeners.0.address": in,
		"scheduler.window":    "1s",
		"retry.base":          "1s",
		"retry.factor":        1,
		"retry.max_attempts":  60,
		"log.stats_interval":  "2s",
		"tor": map[string]any{
			"managed":        true,
			"torrc":          tn.ClientTorrc(),
			"onion_services": []map[string]any{{"listener": "relay-in"}},
		},
	})
	n := startNode(t, cfg, data, in)
	n.waitLog(t, "[TOR] onion service published", 90*time.Second)
	self, err := mixmta(t, "onion", "address", "-c", cfg, "relay-in")
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{"short " + token() + "\r\n", strings.Repeat("0123456789abcdef\r\n", 600) + token() + "\r\n"}
	for _, b := range bodies {
		c := onionSession(t, tn, strings.TrimSpace(self))
		if err := c.Mail("someone@example.org", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("dest@"+dest, nil); err != nil {
			t.Fatalf("RCPT to an onion through pluto2's onion: %v", err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "Subject: pluto2\r\n\r\n"+b)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		c.Quit()
	}
	// Down: attempts reach the onion service and fail; nothing is lost.
	deadline := time.Now().Add(90 * time.Second)
	for refused.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d attempts reached the onion service while down\n%s", refused.Load(), tailLines(n.log(), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if sink.Count() != 0 {
		t.Fatal("delivered while down")
	}
	up.Store(true)
	sinkMessages(t, sink, 2, 3*time.Minute)
	// smtp-sink's dump file exists before the whole message is in it:
	// read the messages once mixmta has seen both 250s.
	waitFor(t, time.Minute, "2 [DELIVER] sent lines", func() bool {
		return strings.Count(n.log(), "[DELIVER] sent:") >= 2
	})
	msgs := sinkMessages(t, sink, 2, 3*time.Minute)
	for _, m := range msgs {
		crlf := len(m.Data) + bytes.Count(m.Data, []byte("\n"))
		if crlf%8192 != 0 {
			t.Errorf("delivered size %d bytes is not a multiple of 8 KiB", crlf)
		}
		ok := false
		for _, b := range bodies {
			if bytes.HasSuffix(m.Data, []byte("\n\n"+strings.ReplaceAll(b, "\r\n", "\n"))) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("body not intact at the end of a %d-byte message", len(m.Data))
		}
	}
	t.Logf("attempts refused while down: %d", refused.Load())
}
