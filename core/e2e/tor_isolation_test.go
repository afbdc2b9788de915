package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestDeliveriesToDifferentOnionsUseDifferentCircuits: the gateway's
// deliveries to two onion services ride different Tor circuits, and two
// deliveries to the same one share its circuit (the negative control: the
// check sees sharing when there is some), as tor's control port reports in
// STREAM events.
func TestDeliveriesToDifferentOnionsUseDifferentCircuits(t *testing.T) {
	tn := peers.Tor(t)
	sinkA, sinkB := peers.SmtpSink(t), peers.SmtpSink(t)
	onionA, onionB := tn.AddOnion(t, 25, sinkA.Addr), tn.AddOnion(t, 25, sinkB.Addr)
	ctl, err := peers.DialTorControl(tn.ControlAddr, tn.ControlCookie)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if _, err := ctl.Cmd("SETEVENTS STREAM"); err != nil {
		t.Fatal(err)
	}
	sub := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(`log: {level: info}
scheduler: {window: 100ms}
listeners:
  - name: submission
    address: %s
    relay: {networks: [127.0.0.1/32]}
pipeline:
  - name: deliver
    plugin: onionmx
    config: {srv: false, tls: none, max_idle: 0}
tor:
  socks_address: %s
`, sub, tn.SocksAddr), nil)
	startNode(t, cfg, data, sub)
	circuit := func(onion string, sink *peers.SinkPeer) string {
		t.Helper()
		n := sink.Count()
		if err := sendRaw(sub, "s@example.org", []string{"x@" + onion}, []byte("Subject: i\r\n\r\nbody\r\n"), false); err != nil {
			t.Fatal(err)
		}
		// 650 STREAM <StreamID> SUCCEEDED <CircuitID> <Target>
		for {
			ev, err := ctl.Event(2 * time.Minute)
			if err != nil {
				t.Fatalf("no STREAM SUCCEEDED to %s: %v", onion, err)
			}
			f := strings.Fields(ev)
			if len(f) >= 5 && f[0] == "STREAM" && f[2] == "SUCCEEDED" && strings.HasPrefix(f[4], onion+":") {
				if !sink.WaitCount(n+1, time.Minute) {
					t.Fatalf("delivery to %s did not arrive", onion)
				}
				return f[3]
			}
		}
	}
	a1, b, a2 := circuit(onionA, sinkA), circuit(onionB, sinkB), circuit(onionA, sinkA)
	t.Logf("circuits: A %s, B %s, A again %s", a1, b, a2)
	if a1 == b {
		t.Fatalf("deliveries to two onion services shared circuit %s", a1)
	}
	if a1 != a2 {
		t.Fatalf("two deliveries to one onion used circuits %s and %s: the check could not tell sharing", a1, a2)
	}
}
