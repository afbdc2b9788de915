package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/directory"
	"github.com/mixmta/mixmta/internal/peers"
)

// netns is a network namespace of its own for one node: it has only a
// loopback, so the node reaches nothing but what the test forwards into
// it, the way an on-path adversary (a hostile ISP, a compromised router)
// decides which of the node's connections go through.
type netns struct {
	name string
	fd   int // open handle on the namespace, for setns(2)

	mu    sync.Mutex
	lns   []net.Listener
	conns map[net.Conn]struct{}
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	peers.Ensure(t, "ip", "iproute2")
	name := fmt.Sprintf("mixmta-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	ns := &netns{name: name, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		ns.mu.Lock()
		for _, l := range ns.lns {
			l.Close()
		}
		for c := range ns.conns {
			c.Close()
		}
		ns.mu.Unlock()
		if ns.fd > 0 {
			unix.Close(ns.fd)
		}
		exec.Command("ip", "netns", "del", name).Run()
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v\n%s", err, out)
	}
	fd, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ns.fd = fd
	return ns
}

// inside runs f on an OS thread moved into the namespace: sockets f makes
// belong to it for their whole life. The thread goes back to the test's
// namespace before it is unlocked; if it cannot, it stays locked and ends
// with the goroutine (or, on the main thread, is parked for good: then
// /proc/self/net of this process would show the node's namespace, which
// is why readers of it use /proc/thread-self/net).
func (ns *netns) inside(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(home)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err = f()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// gate is one destination the node in the namespace dials: forwarded to
// the same address outside, or, while blocked, cut at once after the
// connection is accepted (counted in refused).
type gate struct {
	addr    string
	blocked atomic.Bool
	refused atomic.Int64
}

// out forwards connections the node makes to addr (inside) to addr outside.
func (ns *netns) out(t *testing.T, addr string) *gate {
	t.Helper()
	g := &gate{addr: addr}
	var ln net.Listener
	if err := ns.inside(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatalf("listen in the namespace on %s: %v", addr, err)
	}
	ns.serve(ln, func(c net.Conn) {
		if g.blocked.Load() {
			g.refused.Add(1)
			c.Close()
			return
		}
		up, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			c.Close()
			return
		}
		ns.splice(c, up)
	})
	return g
}

// in forwards connections to addr outside to the node listening on addr
// inside (its SMTP listener, its mix listener that the authorities probe
// and the other nodes send to).
func (ns *netns) in(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	ns.serve(ln, func(c net.Conn) {
		var down net.Conn
		if err := ns.inside(func() (err error) { down, err = net.DialTimeout("tcp", addr, 10*time.Second); return }); err != nil {
			c.Close()
			return
		}
		ns.splice(c, down)
	})
}

func (ns *netns) serve(ln net.Listener, handle func(net.Conn)) {
	ns.mu.Lock()
	ns.lns = append(ns.lns, ln)
	ns.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

func (ns *netns) splice(a, b net.Conn) {
	ns.mu.Lock()
	ns.conns[a], ns.conns[b] = struct{}{}, struct{}{}
	ns.mu.Unlock()
	var once sync.Once
	done := func() {
		once.Do(func() {
			a.Close()
			b.Close()
			ns.mu.Lock()
			delete(ns.conns, a)
			delete(ns.conns, b)
			ns.mu.Unlock()
		})
	}
	go func() { io.Copy(a, b); done() }()
	go func() { io.Copy(b, a); done() }()
}

// nodeAddrs are the addresses a node's config binds and dials.
type nodeAddrs struct {
	Mix struct {
		Address   string `yaml:"address"`
		Directory struct {
			Authorities []struct {
				Address string `yaml:"address"`
			} `yaml:"authorities"`
		} `yaml:"directory"`
	} `yaml:"mix"`
}

func readAddrs(t *testing.T, cfg string) nodeAddrs {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var a nodeAddrs
	if err := yaml.Unmarshal(b, &a); err != nil || a.Mix.Address == "" {
		t.Fatalf("%s: no mix address (%v)", cfg, err)
	}
	return a
}

// TestBlockedLinksHoldMailEndToEnd: 7 real nodes, 3 of them authorities,
// agree on one consensus of all 7 (the authorities reach every node). Node
// 7 runs in a network namespace of its own, through which the test
// forwards only its links to nodes 5 and 6 (and its directory traffic):
// its links to the 4 other nodes are cut, as an adversary on its path
// would cut them to steer its mail through nodes 5 and 6. Paths are 2 hops,
// so those two would make a full path: only the consensus-majority rule
// stops node 7 from routing through them. Mail submitted to it with swaks
// is accepted and held (nothing at smtp-sink, no Sphinx packet made or
// sent, the item waiting in `mixmta queue ls`, the log and stats say
// paths are held). Once the links are forwarded again, the held mail is
// delivered.
func TestBlockedLinksHoldMailEndToEnd(t *testing.T) {
	sink := peers.SmtpSink(t)
	d := newDirNet(t, 7, 3, sink.Addr)
	for _, cfg := range d.cfgs {
		b, _ := os.ReadFile(cfg)
		b, err := config.Patch(b, map[string]any{"pipeline.sphinx.config.hops": 2})
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(cfg, b, 0o600)
	}
	const x = 6                               // node7
	reached := map[int]bool{4: true, 5: true} // node5, node6
	addrs := make([]nodeAddrs, len(d.cfgs))
	for i, cfg := range d.cfgs {
		addrs[i] = readAddrs(t, cfg)
	}

	ns := newNetns(t)
	var cut []*gate
	for i := range d.cfgs {
		if i == x {
			continue
		}
		g := ns.out(t, addrs[i].Mix.Address)
		if !reached[i] {
			g.blocked.Store(true)
			cut = append(cut, g)
		}
	}
	for _, a := range addrs[x].Mix.Directory.Authorities {
		ns.out(t, a.Address)
	}
	ns.out(t, sink.Addr)
	ns.in(t, addrs[x].Mix.Address)
	ns.in(t, d.smtp[x])

	for i := range x {
		d.start(t, i)
	}
	cfgX := d.cfgs[x]
	nx := &node{t: t, cfgPath: cfgX, dataDir: filepath.Join(filepath.Dir(cfgX), "data"), addr: d.smtp[x],
		logPath: filepath.Join(filepath.Dir(cfgX), "mixmta.log"), wrap: []string{"ip", "netns", "exec", ns.name}}
	nx.start()
	t.Cleanup(func() {
		nx.stop()
		if t.Failed() {
			t.Logf("node7 log (last 60 lines):\n%s", tailLines(nx.log(), 60))
		}
	})
	d.nodes[x] = nx

	epoch := d.waitConsensus(t, 0, 6*dirEpoch, func(c *directory.Consensus) bool {
		return len(c.Nodes) == 7 && len(c.Signatures) == 3
	})
	t.Logf("epoch %d: all 7 nodes, node7 included, in the consensus signed by 3 authorities", epoch)

	// node7 finds exactly the two nodes it still reaches healthy.
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := lastStats(nx.log())
		if statValue(st, "healthy_nodes") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node7 does not report 2 healthy nodes: %s", st)
		}
		time.Sleep(250 * time.Millisecond)
	}
	refused := int64(0)
	for _, g := range cut {
		if g.refused.Load() == 0 {
			t.Errorf("node7 never tried the cut link to %s", g.addr)
		}
		refused += g.refused.Load()
	}
	t.Logf("node7: 2 of 6 nodes reached, %d connections to the 4 others cut", refused)

	code, out := peers.Swaks(t, "--server", d.smtp[x], "--from", "a@example.org", "--to", "held@example.net",
		"--header", "Subject: steered", "--body", "held, not routed through the two nodes left")
	if code != 0 {
		t.Fatalf("swaks to node7: exit %d\n%s", code, out)
	}
	// Several probe intervals and far more than the delays of a 2-hop
	// path: a message routed through nodes 5 and 6 would be at the sink.
	time.Sleep(15 * time.Second)
	if n := sink.Count(); n != 0 {
		t.Fatalf("smtp-sink got %d messages while node7 reached only 2 of 6 nodes: mail was routed through them", n)
	}
	st := lastStats(nx.log())
	if statValue(st, "sphinx_messages") != 0 || statValue(st, "sphinx_packets") != 0 || statValue(st, "own_sent") != 0 || !strings.Contains(st, "paths=held") {
		t.Fatalf("node7 made or sent Sphinx packets of the held message: %s", st)
	}
	if !strings.Contains(nx.log(), "too few healthy nodes") {
		t.Errorf("node7 does not log that it holds mail:\n%s", tailLines(nx.log(), 20))
	}
	qout, err := mixmta(t, "queue", "ls", "--json", "-c", cfgX)
	if err != nil {
		t.Fatalf("queue ls: %v\n%s", err, qout)
	}
	// Besides packets it forwards for others (stuck too on the cut
	// links), node7's queue holds the message, waiting before the router.
	var items []map[string]any
	if err := json.Unmarshal([]byte(qout), &items); err != nil {
		t.Fatalf("queue ls --json: %v\n%s", err, qout)
	}
	held := 0
	for _, it := range items {
		if it["kind"] == "message" && it["waiting"] == true {
			held++
		}
	}
	if held != 1 {
		t.Fatalf("node7's queue holds %d waiting messages, want 1:\n%s", held, qout)
	}
	t.Logf("held: %s", st)

	// The adversary goes away: node7 reaches every node again and sends
	// the held message; nothing is lost.
	for _, g := range cut {
		g.blocked.Store(false)
	}
	if !sink.WaitCount(1, 90*time.Second) {
		t.Fatalf("the held message was not delivered after the links came back: %s", lastStats(nx.log()))
	}
	msgs, err := sink.Messages()
	if err != nil || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "held, not routed") {
		t.Fatalf("smtp-sink has %d messages (%v), want the held one", len(msgs), err)
	}
	// The stats line comes once a second: it may not count the send yet.
	deadline = time.Now().Add(10 * time.Second)
	for st = lastStats(nx.log()); statValue(st, "own_sent") < 1; st = lastStats(nx.log()) {
		if time.Now().After(deadline) {
			t.Fatalf("node7 delivered without sending its own packets: %s", st)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("delivered after unblocking: %s", st)
}
