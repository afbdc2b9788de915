package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/directory"
	"github.com/mixmta/mixmta/internal/peers"
)

// portClients returns, for every established TCP connection to
// 127.0.0.1:port, the socket inode of its client end and the name
// (/proc/PID/comm) of the local process holding it; inodes in known are
// skipped (already attributed). Linux /proc, as peers.ConnOwner.
func portClients(port int, known map[string]string) (map[string]string, error) {
	f, err := os.Open("/proc/thread-self/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	remote := fmt.Sprintf("0100007F:%04X", port)
	want := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// fs[2] rem_address, fs[3] state (01 ESTABLISHED), fs[9] inode
		if len(fs) > 9 && fs[2] == remote && fs[3] == "01" && fs[9] != "0" && known[fs[9]] == "" {
			want["socket:["+fs[9]+"]"] = true
		}
	}
	out := map[string]string{}
	if len(want) == 0 {
		return out, nil
	}
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		fds, _ := os.ReadDir(filepath.Join(p, "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(p, "fd", fd.Name()))
			if err != nil || !want[l] {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(p, "comm"))
			out[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = strings.TrimSpace(string(comm)) + " (pid " + filepath.Base(p) + ")"
		}
	}
	return out, nil
}

// connWatch samples, until stopped, which processes hold connections to
// the given loopback ports.
type connWatch struct {
	mu     sync.Mutex
	owners map[string]string // client socket inode -> "comm (pid N)"
	stop   chan struct{}
	done   chan struct{}
}

func watchPorts(t *testing.T, ports []int) *connWatch {
	w := &connWatch{owners: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, p := range ports {
				w.mu.Lock()
				got, err := portClients(p, w.owners)
				for k, v := range got {
					w.owners[k] = v
				}
				w.mu.Unlock()
				if err != nil {
					t.Errorf("connections to port %d: %v", p, err)
					return
				}
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *connWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// byOwner counts the connections seen by process name.
func (w *connWatch) byOwner() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for _, o := range w.owners {
		out[strings.Fields(o)[0]]++
	}
	return out
}

// TestDirectoryOverOnionServices: 3 authorities and 2 mixes on the Tor
// test network, every link over Tor as in TestMixnetOverOnionServices, and
// the directory too: each authority publishes its directory listener as an
// onion service, the network's list of authorities (made by `mixmta
// mixnet init --authorities` from a profile with a tor: section) names
// only those onions, and every upload, vote, signature and consensus
// fetch reaches an authority's listener from tor, never directly from a
// mixmta process (watched in /proc for the whole test; negative control:
// a direct connection is attributed to this test). The nodes agree on one
// consensus signed by all three authorities, and on the next epoch's, and
// a message crosses the mixnet to smtp-sink.
func TestDirectoryOverOnionServices(t *testing.T) {
	tn := peers.Tor(t)
	sink := peers.SmtpSink(t)
	// Long enough for votes and signatures over onion circuits in the
	// windows of P/8 (directory.md) on a loaded machine.
	const epoch = 40 * time.Second
	d := newDirNetWith(t, 5, 3, sink.Addr, epoch, map[string]any{
		"tor": map[string]any{
			"socks_address":   tn.SocksAddr,
			"control_address": tn.ControlAddr,
			"cookie_file":     tn.ControlCookie,
			"onion_services":  []map[string]any{{"listener": "mix"}},
		},
		"mix.probe_interval": "2s",
	})
	var ports []int
	for i := range 3 {
		cfg, err := config.Load(d.cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(cfg.Mix.Directory.Listen)
		port, _ := strconv.Atoi(p)
		ports = append(ports, port)
		published := false
		for _, o := range cfg.Tor.OnionServices {
			published = published || o.Listener == config.DirectoryOnion
		}
		if !published {
			t.Fatalf("node%d (an authority) does not publish its directory listener as an onion service", i+1)
		}
	}
	cfg, err := config.Load(d.cfgs[4])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.Mix.Directory.Authorities {
		if !strings.Contains(a.Address, ".onion:") {
			t.Fatalf("authority %s listed at %s, not an onion service", a.Name, a.Address)
		}
	}

	// Negative control of the watch: a direct connection to an
	// authority's listener is seen, and attributed to this process.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]))
	if err != nil {
		t.Fatal(err)
	}
	direct, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := portClients(ports[0], map[string]string{})
	direct.Close()
	ln.Close()
	self := fmt.Sprintf("(pid %d)", os.Getpid())
	if err != nil || len(got) != 1 || !strings.HasSuffix(firstValue(got), self) {
		t.Fatalf("the watch does not attribute a direct connection to this test %s: %v %v", self, got, err)
	}

	w := watchPorts(t, ports)
	for i := range d.cfgs {
		d.start(t, i)
	}
	for i := range 3 {
		d.nodes[i].waitLog(t, "listener=directory onion=", 2*time.Minute)
	}
	first := d.waitConsensus(t, 0, 4*epoch, func(c *directory.Consensus) bool {
		return len(c.Nodes) == 5 && len(c.Signatures) == 3
	})
	t.Logf("epoch %d: 5 nodes agree on a consensus signed by 3 authorities over Tor", first)

	body := "Subject: over onions\r\n\r\nthrough the consensus over Tor " + token() + "\r\n"
	if err := sendRaw(d.smtp[3], "a@example.org", []string{"dir@example.net"}, []byte(body), false); err != nil {
		t.Fatal(err)
	}
	msgs := sinkMessages(t, sink, 1, 3*time.Minute)
	if want := strings.ReplaceAll(body[strings.Index(body, "\r\n\r\n")+4:], "\r\n", "\n"); !strings.Contains(strings.ReplaceAll(string(msgs[0].Data), "\r\n", "\n"), want) {
		t.Fatalf("sink got a message without the body sent:\n%s", msgs[0].Data)
	}
	next := d.waitConsensus(t, first+1, 3*epoch, func(c *directory.Consensus) bool {
		return len(c.Nodes) == 5 && len(c.Signatures) == 3
	})
	t.Logf("epoch %d: the next consensus, agreed again", next)

	w.end()
	owners := w.byOwner()
	t.Logf("connections to the authorities' listeners by process: %v", owners)
	if owners["tor"] == 0 {
		t.Fatal("no connection to an authority's listener was seen at all")
	}
	for comm, n := range owners {
		if comm != "tor" {
			t.Errorf("%d connections to an authority's listener came from %s, not through Tor", n, comm)
		}
	}
}

func firstValue(m map[string]string) string {
	for _, v := range m {
		return v
	}
	return ""
}
