package peers

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestTorNetCarriesStreamToOnionService starts the offline Tor network,
// publishes an onion service in front of a loopback listener and reads its
// greeting through the client's SocksPort: the whole onion path (HSDir
// lookup, introduction, rendezvous) works.
func TestTorNetCarriesStreamToOnionService(t *testing.T) {
	tn := Tor(t)
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
			_, _ = io.WriteString(c, "hello over onion\n")
			c.Close()
		}
	}()
	start := time.Now()
	onion := tn.AddOnion(t, 25, l.Addr().String())
	t.Logf("onion %s published in %s", onion, time.Since(start))
	if len(onion) != 62 {
		t.Fatalf("onion address %q, want 56 characters + .onion", onion)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The service has uploaded its descriptor to one HSDir when AddOnion
	// returns; the client may ask another that has not got it yet (Tor's
	// extended SOCKS reply 0xF0, "unknown code: 240"): ask again.
	c, err := tn.DialSocks(ctx, onion+":25", "a", "b")
	for err != nil && strings.Contains(err.Error(), "unknown code: 240") && ctx.Err() == nil {
		t.Logf("dial onion: %v; again in 1 s", err)
		time.Sleep(time.Second)
		c, err = tn.DialSocks(ctx, onion+":25", "a", "b")
	}
	if err != nil {
		t.Fatalf("dial onion: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if string(b) != "hello over onion\n" {
		t.Fatalf("read %q (%v)", b, err)
	}
	// Negative control: a port the service does not publish fails.
	if c, err := tn.DialSocks(ctx, onion+":26", "a", "b"); err == nil {
		c.Close()
		t.Fatal("dial to an unpublished onion port succeeded")
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	StopTor()
	os.Exit(code)
}

// TestConnOwnerTellsTorFromDirect: a stream through an exit is owned by a
// tor process; a direct connection by this test process.
func TestConnOwnerTellsTorFromDirect(t *testing.T) {
	tn := Tor(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	owners := make(chan string, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			comm, pid, err := ConnOwner(c)
			owners <- fmt.Sprintf("%s/%d/%v", comm, pid, err)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := tn.DialSocks(ctx, l.Addr().String(), "x", "y")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := <-owners; !strings.HasPrefix(got, "tor/") {
		t.Fatalf("through Tor the owner is %s, want tor", got)
	}
	d, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, want := <-owners, fmt.Sprintf("/%d/<nil>", os.Getpid()); !strings.HasSuffix(got, want) {
		t.Fatalf("direct owner %s, want this process (%d)", got, os.Getpid())
	}
}
