package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/directory"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/internal/peers"
)

// dirEpoch is the epoch of the directory tests: short, so that a few
// consensus rounds fit in a minute or two.
const dirEpoch = 15 * time.Second

// dirNet is a local mixnet whose nodes take the network from the
// consensus of authorities among them, made by `mixmta mixnet init
// --authorities`: nobody hands descriptors around, there is no nodes file.
type dirNet struct {
	dir   string
	cfgs  []string
	smtp  []string
	nodes []*node // nil until started
}

// newDirNet prepares n nodes, the first auths of them authorities.
func newDirNet(t *testing.T, n, auths int, relayHost string) *dirNet {
	t.Helper()
	return newDirNetWith(t, n, auths, relayHost, dirEpoch, nil)
}

// newDirNetWith is newDirNet with another epoch length and more profile
// settings (dotted paths, applied to the profile before mixnet init).
func newDirNetWith(t *testing.T, n, auths int, relayHost string, epoch time.Duration, extra map[string]any) *dirNet {
	t.Helper()
	dir := t.TempDir()
	smtpPort, mixPort, dirPort := freeRange(t, n), freeRange(t, n), freeRange(t, auths)
	settings := mixnetSettings(relayHost, map[string]any{
		"mix.epoch": fmt.Sprintf("%ds", int(epoch/time.Second)),
		"mix.grace": "10s", // packets outlive most of a short epoch on a loaded machine
	})
	for k, v := range extra {
		settings[k] = v
	}
	cfgs := initMixnet(t, dir, "configs/local-mixnet.yaml", settings,
		"--nodes", strconv.Itoa(n), "--smtp-port", strconv.Itoa(smtpPort), "--mix-port", strconv.Itoa(mixPort),
		"--authorities", strconv.Itoa(auths), "--dir-port", strconv.Itoa(dirPort))
	if _, err := os.Stat(filepath.Join(dir, "nodes.json")); err == nil {
		t.Fatal("mixnet init with authorities wrote a nodes file")
	}
	d := &dirNet{dir: dir, cfgs: cfgs}
	for i := range cfgs {
		d.smtp = append(d.smtp, fmt.Sprintf("127.0.0.1:%d", smtpPort+i))
		d.nodes = append(d.nodes, nil)
	}
	return d
}

func (d *dirNet) start(t *testing.T, i int) {
	t.Helper()
	d.nodes[i] = startNode(t, d.cfgs[i], filepath.Join(filepath.Dir(d.cfgs[i]), "data"), d.smtp[i])
}

// consensus is the consensus node i stored last (nil if none).
func (d *dirNet) consensus(i int) *directory.Consensus {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(d.cfgs[i]), "data", "consensus.json"))
	if err != nil {
		return nil
	}
	var c directory.Consensus
	if json.Unmarshal(b, &c) != nil {
		return nil
	}
	return &c
}

// waitConsensus waits until every running node stores a consensus of an
// epoch >= min for which ok holds, and returns the epoch they agree on.
func (d *dirNet) waitConsensus(t *testing.T, min uint64, within time.Duration, ok func(*directory.Consensus) bool) uint64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var epoch uint64
		var digest [32]byte
		agree := true
		for i, n := range d.nodes {
			if n == nil {
				continue
			}
			c := d.consensus(i)
			if c == nil || c.Epoch < min || !ok(c) {
				agree = false
				break
			}
			dg, _ := c.Digest()
			if epoch == 0 {
				epoch, digest = c.Epoch, dg
			} else if c.Epoch != epoch || dg != digest {
				agree = false
				break
			}
		}
		if agree && epoch > 0 {
			return epoch
		}
		if time.Now().After(deadline) {
			for i := range d.nodes {
				if c := d.consensus(i); c != nil {
					t.Logf("node%d: consensus epoch %d, %d nodes, %d signatures", i+1, c.Epoch, len(c.Nodes), len(c.Signatures))
				} else {
					t.Logf("node%d: no consensus", i+1)
				}
			}
			t.Fatalf("nodes did not agree on a consensus of epoch >= %d within %s", min, within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func nodeNames(c *directory.Consensus) []string {
	var out []string
	for _, d := range c.Nodes {
		out = append(out, d.Name)
	}
	return out
}

// framesFrom counts the frames node i received ("in") after t0.
func (d *dirNet) framesIn(i int, after time.Time) int {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(d.cfgs[i]), "frames.log"))
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 4 && f[0] == "in" {
			if ns, err := strconv.ParseInt(f[1], 10, 64); err == nil && ns > after.UnixNano() {
				n++
			}
		}
	}
	return n
}

// TestDirectoryAuthoritiesAgreeAndANodeJoinsByConfig: 3 authorities and 4
// mixes, with no nodes file, agree on one consensus per epoch signed by
// all three; mail crosses the network; a fifth mix started later, known
// to nobody but through its upload, is in the consensus of a later epoch
// and receives traffic from then on. With one authority down the network
// keeps getting consensus documents (signed by two of three); with two
// down no consensus is made, the nodes keep the last one until it expires,
// and then hold mail.
func TestDirectoryAuthoritiesAgreeAndANodeJoinsByConfig(t *testing.T) {
	pf := peers.Postfix(t)
	d := newDirNet(t, 8, 3, pf.Addr)
	for i := range 7 {
		d.start(t, i)
	}
	first := d.waitConsensus(t, 0, 6*dirEpoch, func(c *directory.Consensus) bool {
		return len(c.Nodes) == 7 && len(c.Signatures) == 3
	})
	t.Logf("epoch %d: 7 nodes agree on a consensus signed by 3 authorities", first)
	// The operator's view of it.
	out, err := mixmtaCommand(t, "nodes", "consensus", "-c", d.cfgs[3]).CombinedOutput()
	if err != nil {
		t.Fatalf("nodes consensus: %v\n%s", err, out)
	}
	for _, want := range []string{"signed by  node1, node2, node3 (3 of 3 authorities, 2 needed)", "nodes      7", "node1 ", "node7 ", "exit"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nodes consensus does not show %q:\n%s", want, out)
		}
	}

	if err := sendRaw(d.smtp[3], "a@example.org", []string{"dir@example.net"}, []byte("Subject: hi\r\n\r\nthrough the consensus\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if got := pf.WaitMessages(t, 1, 90*time.Second); len(got) != 1 {
		t.Fatalf("Postfix got %d messages, want 1", len(got))
	}

	// node8 joins: only its config names the authorities.
	d.start(t, 7)
	joined := d.waitConsensus(t, first+1, 5*dirEpoch, func(c *directory.Consensus) bool {
		return len(c.Nodes) == 8
	})
	t.Logf("epoch %d: node8 is in the consensus: %v", joined, nodeNames(d.consensus(0)))
	inUse := time.Unix(d.consensus(0).ValidAfter.Unix(), 0)
	if time.Now().Before(inUse) {
		time.Sleep(time.Until(inUse))
	}
	deadline := time.Now().Add(2 * dirEpoch)
	for d.framesIn(7, inUse) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node8 got no frame within %s of the epoch it joined", 2*dirEpoch)
		}
		time.Sleep(250 * time.Millisecond)
	}

	// One authority down: consensus goes on, signed by the other two.
	d.nodes[2].stop()
	d.nodes[2] = nil
	two := d.waitConsensus(t, joined+1, 4*dirEpoch, func(c *directory.Consensus) bool {
		return len(c.Signatures) == 2
	})
	t.Logf("epoch %d: consensus signed by 2 of 3 authorities with auth3 down", two)

	// Two down: no new consensus; the last stays in use until it expires.
	d.nodes[1].stop()
	d.nodes[1] = nil
	last := d.consensus(0)
	time.Sleep(time.Until(last.ValidUntil) + 2*time.Second)
	for i, n := range d.nodes {
		if n == nil {
			continue
		}
		if c := d.consensus(i); c.Epoch > last.Epoch+1 {
			t.Fatalf("node%d has a consensus of epoch %d with only one authority up", i+1, c.Epoch)
		}
	}
	for i, n := range d.nodes {
		if n == nil || i == 1 || i == 2 {
			continue
		}
		if !strings.Contains(n.log(), "consensus expired") {
			t.Errorf("node%d did not report its consensus expired:\n%s", i+1, tailLines(n.log(), 20))
		}
	}
	before := len(pf.Messages())
	if err := sendRaw(d.smtp[3], "a@example.org", []string{"held@example.net"}, []byte("Subject: held\r\n\r\nheld\r\n"), false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	if got := len(pf.Messages()); got != before {
		t.Fatalf("a message was delivered with no valid consensus (%d -> %d)", before, got)
	}
	if log := d.nodes[3].log(); !strings.Contains(log, "mail is held") {
		t.Errorf("node4 does not say it holds mail:\n%s", tailLines(log, 20))
	}
}

// futureKeys returns the epochs of the mix key files in keyDir and the
// current epoch, read while no epoch boundary passed.
func futureKeys(t *testing.T, keyDir string) (cur uint64, epochs []uint64) {
	t.Helper()
	for {
		cur = nodes.Epoch(time.Now(), dirEpoch)
		epochs = nil
		ents, err := os.ReadDir(keyDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			s, ok := strings.CutPrefix(e.Name(), "mix-")
			if s, ok2 := strings.CutSuffix(s, ".key"); ok && ok2 {
				n, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					t.Fatalf("key file %s", e.Name())
				}
				epochs = append(epochs, n)
			}
		}
		if nodes.Epoch(time.Now(), dirEpoch) == cur {
			slices.Sort(epochs)
			return cur, epochs
		}
	}
}

// TestDirectoryNodeKeepsOnlyCurrentNextAndMarginKeys: the local-mixnet
// profile sets keys_ahead 24 for its nodes file; `mixmta mixnet init
// --authorities` makes configs that drop it to the directory's margin, and
// a node with a directory has on disk the mix keys of the current, the next
// and one margin epoch only (and the previous one during its grace), at
// init, at start and after an epoch change.
func TestDirectoryNodeKeepsOnlyCurrentNextAndMarginKeys(t *testing.T) {
	prof, err := os.ReadFile(filepath.Join(repoRoot, "configs/local-mixnet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prof), "keys_ahead: 24") {
		t.Fatal("configs/local-mixnet.yaml no longer sets keys_ahead 24: this test would not show the margin wins over a profile's value")
	}
	d := newDirNet(t, 2, 1, "127.0.0.1:9")
	keyDir := filepath.Join(filepath.Dir(d.cfgs[0]), "data", "keys")
	check := func(when string) {
		t.Helper()
		cur, got := futureKeys(t, keyDir)
		var ahead []uint64
		for _, e := range got {
			switch {
			case e >= cur:
				ahead = append(ahead, e)
			case e+1 != cur:
				t.Errorf("%s: key of epoch %d on disk, %d epochs before the current %d", when, e, cur-e, cur)
			}
		}
		if want := []uint64{cur, cur + 1, cur + 2}; !slices.Equal(ahead, want) {
			t.Errorf("%s: mix keys on disk for epochs %v (current %d), want exactly %v", when, got, cur, want)
		}
	}
	check("after mixnet init")
	d.start(t, 0)
	d.nodes[0].waitLog(t, "[DIRECTORY] authority listening", 30*time.Second)
	check("after start")
	next := nodes.EpochStart(nodes.Epoch(time.Now(), dirEpoch)+1, dirEpoch)
	time.Sleep(time.Until(next) + 3*time.Second)
	check("an epoch later")
}
