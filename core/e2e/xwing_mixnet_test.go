package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// xwingPatches make a local mixnet of the post-quantum KEM format: the
// core's keys and the mixer stage both X-Wing.
func xwingPatches(extra map[string]any) map[string]any {
	p := map[string]any{
		"mix.sphinx_format":      "xwing",
		"pipeline.sphinx.config": map[string]any{"hops": 3, "sphinx_format": "xwing"},
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// TestXWingMixnetCarriesMessagesOfEverySize: a 5-node mixnet of real
// processes using the hybrid X25519 + ML-KEM-768 packet format carries
// messages of 1 KiB, 60 KiB (two fragments in this format), 200 KiB and
// 1 MiB (fragmented) from one node's SMTP to a temp-dir Postfix: bodies
// byte-identical, envelope sender the exit's <>; the nodes file says
// sphinx_format xwing and every descriptor publishes 1216-byte X-Wing
// keys; every frame on every link the same size; no node logs a sender,
// recipient or subject.
func TestXWingMixnetCarriesMessagesOfEverySize(t *testing.T) {
	pf := peers.Postfix(t)
	m := startMixnet(t, 5, pf.Addr, xwingPatches(nil))

	dir, err := nodes.LoadNodes(filepath.Join(m.dir, "nodes.json"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if dir.Format != mixkey.XWing || dir.Len() != 5 {
		t.Fatalf("nodes file: format %v, %d nodes; want xwing, 5", dir.Format, dir.Len())
	}
	for _, n := range dir.All() {
		for _, k := range n.Keys {
			if len(k.Public) != mixkey.XWingPublicSize {
				t.Fatalf("node %s publishes a %d-byte mix key", n.Name, len(k.Public))
			}
		}
	}
	m.waitHealthy(t)

	sizes := []int{1 << 10, 60 << 10, 200 << 10, 1 << 20}
	sendEverySize(t, m, pf, "pq", sizes, 180*time.Second)
	checkFramesAndLogs(t, m, "pq0@")
	if assembled := waitAssembled(m, len(sizes)); assembled != len(sizes) {
		t.Errorf("exits assembled %d messages, want %d", assembled, len(sizes))
	}
}

// serveFails runs `mixmta serve -c cfg` and returns its output, failing
// the test if it is still running after 60 s or exits with status 0.
func serveFails(t *testing.T, cfg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := mixmtaCommandContext(ctx, t, "serve", "-c", cfg).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("mixmta serve still running after 60 s:\n%s", tailLines(string(out), 20))
	}
	if err == nil {
		t.Fatalf("mixmta serve exited 0:\n%s", tailLines(string(out), 20))
	}
	return string(out)
}

// A node never mixes packet formats: it refuses to start when its
// mix.sphinx_format and its mixer stage's sphinx_format differ, when its
// key directory holds keys of the other format, and when the nodes file
// states the other format; each error names what to change (check-config
// finds the first one too). Control: the same node with both settings
// x25519 (its network's) starts.
func TestNodeRefusesToStartWithMixedSphinxFormats(t *testing.T) {
	dir := t.TempDir()
	smtpPort, mixPort := freeRange(t, 2), freeRange(t, 2)
	out, err := mixmtaCommand(t, "mixnet", "init", "--dir", dir,
		"--profile", filepath.Join(repoRoot, "configs/local-mixnet.yaml"), "--nodes", "2",
		"--smtp-port", fmt.Sprint(smtpPort), "--mix-port", fmt.Sprint(mixPort)).CombinedOutput()
	if err != nil {
		t.Fatalf("mixnet init: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "node1", "mixmta.yaml")
	orig, _ := os.ReadFile(cfg)
	variant := func(name string, patches map[string]any) string {
		patches["plugin_dir"] = binDir
		b, err := config.Patch(orig, patches)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "node1", name+".yaml")
		os.WriteFile(p, b, 0o600)
		return p
	}
	for _, c := range []struct {
		name    string
		patches map[string]any
		want    []string
	}{
		{"stage-differs", map[string]any{"mix.sphinx_format": "xwing"},
			[]string{"mix.sphinx_format is xwing", `mixer stage "sphinx" has sphinx_format x25519`}},
		{"keys-differ", xwingPatches(nil),
			[]string{"holds an x25519 key and the sphinx format is xwing"}},
	} {
		cfgPath := variant(c.name, c.patches)
		if c.name == "stage-differs" {
			// check-config finds it too, without starting the node.
			out, err := mixmtaCommand(t, "check-config", "-c", cfgPath).CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want[1]) {
				t.Errorf("check-config of a node whose core and mixer formats differ: %v\n%s", err, tailLines(string(out), 10))
			}
		}
		got := serveFails(t, cfgPath)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, tailLines(got, 10))
			}
		}
	}
	// Without the X25519 keys, the nodes file (x25519) is what differs.
	keys, _ := filepath.Glob(filepath.Join(dir, "node1", "data", "keys", "mix-*.key"))
	if len(keys) == 0 {
		t.Fatal("mixnet init made no mix keys")
	}
	for _, k := range keys {
		os.Remove(k)
	}
	got := serveFails(t, variant("nodes-differ", xwingPatches(nil)))
	if !strings.Contains(got, "the nodes file's sphinx_format is x25519, this node's mix.sphinx_format is xwing") {
		t.Errorf("nodes file of the other format: output lacks the reason:\n%s", tailLines(got, 10))
	}
	// Control: the node of the x25519 network starts (new X25519 keys).
	startNode(t, variant("same", map[string]any{}), filepath.Join(dir, "node1", "data"), fmt.Sprintf("127.0.0.1:%d", smtpPort))
}

// Forward secrecy of the KEM format at the mixnet level: a packet for a
// node's X-Wing key of epoch E, recorded while that key was valid, opens
// with no key material left once E has retired. Node1 of a running mixnet
// (10 s epochs, 2 s grace) is seized with SIGKILL after its key of E has
// been deleted; every mix key file found anywhere in its data dir is tried
// on the recorded packet through the real sphinx plugin (as the key of
// epoch E, validity extended: an adversary sets any clock), and none
// opens it; no file of the data dir holds E's seed in any form.
// Negative control: the copy of E's key file taken while it was valid
// opens the packet the same way.
func TestXWingRetiredEpochKeyOpensNoRecordedPacket(t *testing.T) {
	const epoch, grace = 10 * time.Second, 2 * time.Second
	m := startMixnet(t, 3, "127.0.0.1:9", xwingPatches(map[string]any{
		"mix.epoch":      "10s",
		"mix.grace":      "2s",
		"mix.keys_ahead": 12,
	}))
	target := m.nodes[0]
	keyDir := filepath.Join(target.dataDir, "keys")
	dir, err := nodes.LoadNodes(filepath.Join(m.dir, "nodes.json"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	self, _ := nodes.LoadIdentity(keyDir)
	start := func(e uint64) time.Time { return time.Unix(int64(e)*int64(epoch/time.Second), 0) }
	e := uint64(time.Now().Unix())/uint64(epoch/time.Second) + 1
	keyFile := filepath.Join(keyDir, fmt.Sprintf("mix-%d.key", e))
	snapshot, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	retiredKey, meta, err := mixkey.Decode(snapshot)
	if err != nil || meta.Kind != mixkey.XWing {
		t.Fatalf("key of epoch %d: %v, kind %v", e, err, meta.Kind)
	}
	seed := *retiredKey.Scalar()

	// Record a real message packet whose first hop is node1, built by a
	// sender's sphinx plugin for epoch E from the nodes file.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	plugin := filepath.Join(binDir, "sphinx")
	sender := plugintest.Start(t, plugin, `{"hops": 3, "sphinx_format": "xwing"}`)
	var senderID sdk.NodeID
	senderID[0] = 0xee
	state := sdk.MixState{Epoch: e, Self: senderID, Nodes: dir.Nodes(time.Now())}
	for i := range state.Nodes {
		state.Nodes[i].Healthy = true
	}
	if err := sender.SetMixState(ctx, state); err != nil {
		t.Fatal(err)
	}
	var recorded []byte
	for try := 0; try < 60 && recorded == nil; try++ {
		routes, err := sender.Route(ctx, &sdk.Message{
			Envelope: sdk.Envelope{RcptTo: []string{"victim@example.net"}},
			Header:   []byte("Subject: recorded\r\n\r\n"), Body: []byte("a message recorded on the wire\r\n"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if routes[0].NextHop == self.ID() {
			recorded = routes[0].Body
		}
	}
	if recorded == nil {
		t.Fatal("no path of 60 started at node1")
	}

	// tryKey makes a mixer whose key of epoch E is the key file data and
	// mixes the recorded packet with it.
	mixer := plugintest.Start(t, plugin, `{"hops": 3, "sphinx_format": "xwing"}`)
	tryKey := func(data []byte) error {
		k, _, err := mixkey.Decode(data)
		if err != nil {
			return err
		}
		defer k.Wipe()
		meta := mixkey.Meta{Epoch: e, NotBefore: start(e), NotAfter: time.Now().Add(time.Hour)}
		enc := mixkey.Encode(k, meta)
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("mix-%d.key", e)), enc, 0o600); err != nil {
			t.Fatal(err)
		}
		st := sdk.MixState{Epoch: e, Self: self.ID(), KeyDir: d, Nodes: state.Nodes,
			Keys: []sdk.EpochKey{{Epoch: e, Public: k.Public(), NotBefore: meta.NotBefore, NotAfter: meta.NotAfter}}}
		if err := mixer.SetMixState(ctx, st); err != nil {
			return err
		}
		_, err = mixer.Mix(ctx, recorded)
		return err
	}
	if err := tryKey(snapshot); err != nil {
		t.Fatalf("negative control: the key of epoch %d, copied while valid, does not open the recorded packet: %v", e, err)
	}

	retired := start(e + 1).Add(grace)
	deadline := retired.Add(60 * time.Second)
	for {
		if _, err := os.Stat(keyFile); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key file of epoch %d still exists %v after its grace ended", e, time.Since(retired))
		}
		time.Sleep(50 * time.Millisecond)
	}
	target.kill9()

	// The seizure: every file of the data dir.
	body := strings.TrimSpace(strings.SplitN(string(snapshot), "\n\n", 2)[1])
	needles := [][]byte{seed[:], []byte(body[32:64]), []byte(base64.StdEncoding.EncodeToString(seed[:])[:40])}
	tried, files := 0, 0
	err = filepath.WalkDir(target.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for i, n := range needles {
			if bytes.Contains(data, n) {
				t.Errorf("%s holds the retired key of epoch %d (form %d)", path, e, i)
			}
		}
		if _, _, err := mixkey.Decode(data); err != nil {
			return nil // not a mix key file
		}
		tried++
		if err := tryKey(data); err == nil {
			t.Errorf("%s opens the packet recorded for the retired key of epoch %d", path, e)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tried == 0 {
		t.Fatalf("no mix key file among the %d files of the seized data dir (the node keeps the current and next keys)", files)
	}
	t.Logf("seized data dir: %d files, %d mix key files tried, none opens the packet of epoch %d", files, tried, e)
}
