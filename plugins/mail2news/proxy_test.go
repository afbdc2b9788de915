package main

// In-process stand-ins for what sits in front of a news server in
// production, with a real INN behind them: a SOCKS5 proxy (Tor's role)
// and a TLS terminator (an NNTPS front end such as stunnel).

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// socksProxy is a minimal SOCKS5 server (RFC 1928 CONNECT with RFC 1929
// username/password) that records each request and connects it to
// route(destination).
type socksProxy struct {
	Addr  string
	route func(dest string) string
	mu    sync.Mutex
	log   []socksRequest
}

type socksRequest struct{ user, dest string }

func startSOCKS(t *testing.T, route func(string) string) *socksProxy {
	t.Helper()
	p := &socksProxy{route: route}
	p.Addr = peers.ServeTCP(t, p.serve)
	return p
}

func (p *socksProxy) requests() []socksRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]socksRequest(nil), p.log...)
}

func (p *socksProxy) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	read := func(n int) []byte {
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return nil
		}
		return buf[:n]
	}
	h := read(2) // VER NMETHODS
	if h == nil || h[0] != 5 || read(int(h[1])) == nil {
		return
	}
	c.Write([]byte{5, 2}) // username/password
	v := read(2)
	if v == nil {
		return
	}
	user := string(read(int(v[1])))
	pl := read(1)
	if pl == nil || read(int(pl[0])) == nil {
		return
	}
	c.Write([]byte{1, 0})
	req := read(4) // VER CMD RSV ATYP
	if req == nil || req[1] != 1 {
		return
	}
	var host string
	switch req[3] {
	case 1:
		host = net.IP(append([]byte(nil), read(4)...)).String()
	case 3:
		l := read(1)
		host = string(read(int(l[0])))
	default:
		return
	}
	port := binary.BigEndian.Uint16(read(2))
	dest := net.JoinHostPort(host, strconv.Itoa(int(port)))
	p.mu.Lock()
	p.log = append(p.log, socksRequest{user: user, dest: dest})
	p.mu.Unlock()
	up, err := net.Dial("tcp", p.route(dest))
	if err != nil {
		c.Write([]byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	_ = c.SetDeadline(time.Time{})
	go io.Copy(up, c)
	io.Copy(c, up)
}

// TestSOCKS5CarriesEveryConnectionWithIsolation: with socks5 set, every
// news server is reached through the proxy by its unresolved name, each
// server with its own SOCKS credentials (Tor stream isolation), the same
// credentials for the same server; nothing is dialled directly.
func TestSOCKS5CarriesEveryConnectionWithIsolation(t *testing.T) {
	a, b := peers.INN(t), peers.INN(t)
	names := map[string]string{"news-a.example.onion:119": a.Addr, "news-b.example.onion:119": b.Addr}
	proxy := startSOCKS(t, func(dest string) string { return names[dest] })
	servers := []map[string]any{{"address": "news-a.example.onion:119"}, {"address": "news-b.example.onion:119", "method": "ihave"}}
	// One connection per article, so credentials are seen twice per server.
	p := startPlugin(t, map[string]any{"socks5": proxy.Addr, "servers": servers, "max_idle": 0})
	for _, id := range []string{"socks-1", "socks-2"} {
		if err := deliver(t, p, newsMsg(id, "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
			t.Fatal(err)
		}
		a.WaitArticle(t, "<"+id+"@test.invalid>", "", "", 10*time.Second)
		b.WaitArticle(t, "<"+id+"@test.invalid>", "", "", 10*time.Second)
	}
	reqs := proxy.requests()
	if len(reqs) != 4 {
		t.Fatalf("%d SOCKS requests, want 4: %v", len(reqs), reqs)
	}
	users := map[string]string{}
	for _, r := range reqs {
		if _, ok := names[r.dest]; !ok {
			t.Errorf("SOCKS request for %q, want an unresolved server name", r.dest)
		}
		if u, ok := users[r.dest]; ok && u != r.user {
			t.Errorf("%s: credentials changed between connections (%q, %q)", r.dest, u, r.user)
		}
		users[r.dest] = r.user
	}
	if users["news-a.example.onion:119"] == users["news-b.example.onion:119"] {
		t.Errorf("both servers share SOCKS credentials %q: no stream isolation", users["news-a.example.onion:119"])
	}
	// With idle sessions kept (the default), three more articles open one
	// connection per server and reuse it.
	p = startPlugin(t, map[string]any{"socks5": proxy.Addr, "servers": servers})
	for _, id := range []string{"socks-3", "socks-4", "socks-5"} {
		if err := deliver(t, p, newsMsg(id, "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
			t.Fatal(err)
		}
		a.WaitArticle(t, "<"+id+"@test.invalid>", "", "", 10*time.Second)
		b.WaitArticle(t, "<"+id+"@test.invalid>", "", "", 10*time.Second)
	}
	if n := len(proxy.requests()); n != 6 {
		t.Errorf("%d SOCKS requests after 3 articles with reuse, want 4+2", n)
	}
}

// TestImplicitTLSToNNTPS: tls: tls speaks TLS from the first byte (NNTPS)
// and checks the certificate; here a TLS front end forwards to INN.
func TestImplicitTLSToNNTPS(t *testing.T) {
	inn := peers.INN(t)
	cert, err := peers.SelfSigned("news.example.test")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := cert.TLS()
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	peers.Serve(t, l, func(c net.Conn) {
		up, err := net.Dial("tcp", inn.Addr)
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		io.Copy(c, up)
	})
	ca := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(ca, cert.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": l.Addr().String(), "tls": "tls", "tls_ca_file": ca, "tls_name": "news.example.test"}}})
	if err := deliver(t, p, newsMsg("nntps-1", "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
		t.Fatal(err)
	}
	inn.WaitArticle(t, "<nntps-1@test.invalid>", "", "", 10*time.Second)
	// The wrong name fails the check: temporary, nothing sent.
	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": l.Addr().String(), "tls": "tls", "tls_ca_file": ca, "tls_name": "other.example.test"}}})
	if err := deliver(t, p, newsMsg("nntps-2", "Newsgroups: alt.test\nSubject: s", "b\n")); !isTemporary(err) {
		t.Fatalf("wrong certificate name: %v, want temporary", err)
	}
}

// forwarder is a TCP relay to target whose open connections a test can cut.
type forwarder struct {
	Addr  string
	mu    sync.Mutex
	conns []net.Conn
	count int
}

func startForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &forwarder{Addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.count++
			f.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return f
}

func (f *forwarder) cutAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// TestReusedSessionThatDiedIsReplaced: an idle session the network or the
// server closed meanwhile costs nothing: the article goes over a new one.
func TestReusedSessionThatDiedIsReplaced(t *testing.T) {
	inn := peers.INN(t)
	fw := startForwarder(t, inn.Addr)
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": fw.Addr}}})
	for i, id := range []string{"reuse-1", "reuse-2", "reuse-3"} {
		if i == 2 {
			fw.cutAll()
			time.Sleep(100 * time.Millisecond)
		}
		if err := deliver(t, p, newsMsg(id, "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		inn.WaitArticle(t, "<"+id+"@test.invalid>", "", "", 10*time.Second)
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.count != 2 {
		t.Errorf("%d connections for 3 articles with one cut, want 2 (reuse, then one new)", fw.count)
	}
}
