package tor

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/internal/peers"
)

func TestMain(m *testing.M) {
	code := m.Run()
	peers.StopTor()
	os.Exit(code)
}

// greeter accepts connections and writes msg to each.
func greeter(t *testing.T, msg string) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	n := new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_, _ = io.WriteString(c, msg)
			c.Close()
		}
	}()
	return l.Addr().String(), n
}

func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// managed starts a tor of the test network the way mixmta does.
func managed(t *testing.T, tn *peers.TorNet, dir string) *Managed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := StartManaged(ctx, ManagedOptions{DataDir: dir, Torrc: tn.ClientTorrc(), Log: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestManagedTorPublishesStableOnionAndDials: mixmta's own tor joins the
// network, publishes an onion service whose key stays in a 0600 file,
// reaches a service through its SOCKS port, and after a restart publishes
// the same address again.
func TestManagedTorPublishesStableOnionAndDials(t *testing.T) {
	tn := peers.Tor(t)
	dir := filepath.Join(t.TempDir(), "tor")
	m := managed(t, tn, dir)

	// Outbound: to an onion service of the network, through our dialer.
	target, _ := greeter(t, "remote service\n")
	remote := tn.AddOnion(t, 25, target)
	d, err := NewDialer(m.SocksAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", remote+":25")
	if err != nil {
		t.Fatalf("dial %s through managed tor: %v", remote, err)
	}
	if got := readAll(t, c); got != "remote service\n" {
		t.Fatalf("read %q", got)
	}

	// Inbound: our onion service, reached from the network's client.
	local, _ := greeter(t, "local service\n")
	keyFile := filepath.Join(t.TempDir(), "smtp.onion.key")
	key, err := LoadOrCreateOnionKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	addr, err := Publish(m.Control(), key, []Port{{Virtual: 25, Target: local}})
	if err == nil {
		err = WaitUploaded(m.Control(), addr, time.Minute)
	}
	if err != nil {
		t.Fatal(err)
	}
	c, err = tn.DialSocks(ctx, addr+":25", "x", "y")
	if err != nil {
		t.Fatalf("dial our onion %s: %v", addr, err)
	}
	if got := readAll(t, c); got != "local service\n" {
		t.Fatalf("read %q", got)
	}

	// The same key file gives the same address after a restart.
	m.Close()
	m2 := managed(t, tn, dir)
	key2, err := LoadOrCreateOnionKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	addr2, err := Publish(m2.Control(), key2, []Port{{Virtual: 25, Target: local}})
	if err != nil || addr2 != addr {
		t.Fatalf("after restart: %q, %v; want %q", addr2, err, addr)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("tor data dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

// TestManagedTorRestartsAfterCrash: a tor killed behind mixmta's back is
// started again and works.
func TestManagedTorRestartsAfterCrash(t *testing.T) {
	tn := peers.Tor(t)
	m := managed(t, tn, filepath.Join(t.TempDir(), "tor"))
	old := m.Pid()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for m.Pid() == old || m.Control() == nil {
		if time.Now().After(deadline) {
			t.Fatal("tor not restarted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	target, _ := greeter(t, "after restart\n")
	remote := tn.AddOnion(t, 25, target)
	d, _ := NewDialer(m.SocksAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", remote+":25")
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c); got != "after restart\n" {
		t.Fatalf("read %q", got)
	}
}

// TestDialerHasNoFallback: with tor unreachable the dial fails and the
// destination never sees a connection.
func TestDialerHasNoFallback(t *testing.T) {
	target, n := greeter(t, "x")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	d, err := NewDialer(dead)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := d.DialContext(context.Background(), "tcp", target); err == nil {
		c.Close()
		t.Fatal("dial succeeded without tor")
	} else if !strings.Contains(err.Error(), "tor:") {
		t.Fatalf("error %q does not say it is tor's", err)
	}
	// Negative control: the target is reachable directly.
	c, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, c)
	if n.Load() != 1 {
		t.Fatalf("target saw %d connections, want 1 (the direct control only)", n.Load())
	}
}

// TestDialerIsolatesDestinations: streams to different destinations ride
// different circuits, streams to one destination share one (seen in the
// STREAM events of tor's control port). The sharing half is the negative
// control: it shows the check can see two streams on one circuit.
func TestDialerIsolatesDestinations(t *testing.T) {
	tn := peers.Tor(t)
	m := managed(t, tn, filepath.Join(t.TempDir(), "tor"))
	ev, err := DialControl(m.ControlAddr, Auth{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if _, err := ev.Cmd("SETEVENTS STREAM"); err != nil {
		t.Fatal(err)
	}
	a, _ := greeter(t, "a")
	b, _ := greeter(t, "b")
	d, _ := NewDialer(m.SocksAddr)
	circ := func(target string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			t.Fatalf("dial %s: %v", target, err)
		}
		readAll(t, c)
		// 650 STREAM <StreamID> SUCCEEDED <CircuitID> <Target>
		e, err := ev.WaitEvent(func(e string) bool {
			f := strings.Fields(e)
			return len(f) >= 5 && f[2] == "SUCCEEDED" && f[4] == target
		}, 30*time.Second)
		if err != nil {
			t.Fatalf("no STREAM SUCCEEDED for %s: %v", target, err)
		}
		return strings.Fields(e)[3]
	}
	ca1, cb, ca2 := circ(a), circ(b), circ(a)
	t.Logf("circuits: %s -> %s, %s -> %s, %s again -> %s", a, ca1, b, cb, a, ca2)
	if ca1 == cb {
		t.Fatalf("destinations %s and %s share circuit %s", a, b, ca1)
	}
	if ca1 != ca2 {
		t.Fatalf("one destination used circuits %s and %s: the check cannot tell sharing", ca1, ca2)
	}
}
