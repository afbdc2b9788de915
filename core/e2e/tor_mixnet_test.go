package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestMixnetOverOnionServices: five fog-style nodes, each publishing its
// mix listener as an onion service (the descriptors carry the onion
// addresses) and dialling the others' onions through Tor, carry a 1 KiB
// and a 2 MiB message end to end.
func TestMixnetOverOnionServices(t *testing.T) {
	tn := peers.Tor(t)
	pf := peers.Postfix(t)
	m := startMixnet(t, 5, pf.Addr, map[string]any{
		"tor": map[string]any{
			"socks_address":   tn.SocksAddr,
			"control_address": tn.ControlAddr,
			"cookie_file":     tn.ControlCookie,
			"onion_services":  []map[string]any{{"listener": "mix"}},
		},
		"mix.probe_interval": "2s",
	})
	// Every descriptor names an onion; links use nothing else.
	raw, err := os.ReadFile(filepath.Join(m.dir, "nodes.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(raw, []byte(`.onion:`)); n < 5 {
		t.Fatalf("nodes.json names %d onion addresses, want 5:\n%s", n, raw)
	}
	for _, n := range m.nodes {
		n.waitLog(t, "[TOR] onion service published", 2*time.Minute)
	}
	want := fmt.Sprintf("healthy_nodes=%d", len(m.nodes)-1)
	// Circuits to 4 onions per node take long on a loaded machine.
	deadline := time.Now().Add(5 * time.Minute)
	for _, n := range m.nodes {
		for !strings.Contains(lastStats(n.log()), want) {
			if time.Now().After(deadline) {
				t.Fatalf("node not healthy over Tor: %s", lastStats(n.log()))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	wantBody := map[string][]byte{}
	for i, size := range []int{1 << 10, 2 << 20} {
		rcpt := fmt.Sprintf("tor%d@example.net", i)
		var body bytes.Buffer
		fmt.Fprintf(&body, "token %s\r\n", token())
		for body.Len() < size {
			body.WriteString(strings.Repeat("0123456789", 7) + "\r\n")
		}
		if err := sendRaw(m.smtp[i], "s@example.org", []string{rcpt}, append([]byte("Subject: over onions\r\n\r\n"), body.Bytes()...), false); err != nil {
			t.Fatal(err)
		}
		wantBody[rcpt] = bytes.ReplaceAll(body.Bytes(), []byte("\r\n"), []byte("\n"))
	}
	files := pf.WaitMessages(t, 2, 4*time.Minute)
	for _, f := range files {
		d := parseDelivered(t, f)
		rcpt := strings.Trim(strings.TrimSpace(strings.Join(d.header["delivered-to"], "")), "<>")
		if !bytes.Equal(d.body, wantBody[rcpt]) {
			t.Errorf("%s: body of %d bytes differs from the %d sent", rcpt, len(d.body), len(wantBody[rcpt]))
		}
	}
}
