package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// lookupServer answers Postfix's socketmap lookups (socketmap_table(5)),
// the way onionmx's onionrouter answers tcp_table: for a domain that
// resolves to an onion service (literal .onion, the static map, SRV
// _onion-mx) it returns the transport to this gateway (lookup_transport),
// for anything else NOTFOUND, so Postfix delivers it itself. Postfix's
// transport_maps then reads e.g.
//
//	transport_maps = socketmap:inet:127.0.0.1:23000:transport
type lookupServer struct {
	l         net.Listener
	onion     chain // literal, map, SRV: no local, no clearnet step
	transport string
	timeout   time.Duration
	log       hclog.Logger
}

func startLookupServer(addr, transport string, onion chain, timeout time.Duration, log hclog.Logger) (*lookupServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("onionmx: lookup_listen: %w", err)
	}
	s := &lookupServer{l: l, onion: onion, transport: transport, timeout: timeout, log: log}
	go s.serve()
	return s, nil
}

func (s *lookupServer) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go s.session(c)
	}
}

// maxNetstring bounds a request (Postfix's socketmap_max_reply is 100000;
// a request is a map name and a key).
const maxNetstring = 100000

// session answers requests "<len>:<name> <key>," until the client closes
// (Postfix keeps the connection for many lookups) or stays idle 5 minutes.
func (s *lookupServer) session(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
		req, err := readNetstring(r)
		if err != nil {
			return
		}
		reply := s.answer(req)
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(c, "%d:%s,", len(reply), reply); err != nil {
			return
		}
	}
}

// answer is the reply to one request: "OK <transport>", "NOTFOUND ",
// "TEMP <reason>" or "PERM <reason>".
func (s *lookupServer) answer(req string) string {
	_, key, ok := strings.Cut(req, " ")
	if !ok {
		return "PERM malformed request"
	}
	// Postfix treats a socketmap as a pattern table: transport_maps sends
	// the full recipient address (user@domain) only; a fixed-string caller
	// may send the domain itself. Parent-domain keys (".example.org") are
	// not answered: a subdomain needs its own onion route.
	if i := strings.LastIndexByte(key, '@'); i >= 0 {
		key = key[i+1:]
	}
	if key == "" || strings.Contains(key, " ") || strings.HasPrefix(key, ".") {
		return "NOTFOUND "
	}
	domain, err := recipientDomain("x@" + key)
	if err != nil {
		return "NOTFOUND "
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	ts, err := s.onion.resolve(ctx, domain)
	switch {
	case err == nil && len(ts) > 0:
		return "OK " + s.transport
	case err != nil && !sdk.IsPermanent(err):
		s.log.Debug("lookup failed", "domain", domain, "error", err)
		return "TEMP onion lookup failed"
	}
	return "NOTFOUND "
}

func readNetstring(r *bufio.Reader) (string, error) {
	head, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(head[:len(head)-1])
	if err != nil || n < 0 || n > maxNetstring {
		return "", errors.New("bad netstring length")
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", errors.New("netstring without ','")
	}
	return string(buf[:n]), nil
}

// onionOnly is the chain of the onion steps of cfg, ending in "not found".
func onionOnly(cfg Config, dc *dnsClient, omap *onionMap) chain {
	c := chain{literalOnion{}}
	if omap != nil {
		c = append(c, omap)
	}
	if cfg.SRV {
		c = append(c, srvResolver{dns: dc})
	}
	return c
}
