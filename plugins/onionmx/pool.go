package main

import (
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// session is one SMTP connection ready for a MAIL FROM.
type session struct {
	c         *smtp.Client
	raw       net.Conn // the TCP (or SOCKS) connection under any TLS
	key       string   // pool key: destination host:port
	encrypted bool
	reused    bool      // taken from the idle pool
	wire      *wire     // set when the server offers PIPELINING (pipelining.go)
	idleSince time.Time // when it entered the pool
}

// close drops the connection without QUIT.
func (s *session) close() { _ = s.raw.Close() }

// quit says goodbye politely (bounded by a short timeout) and closes.
func (s *session) quit() {
	if s.wire != nil {
		s.quitWire()
		return
	}
	s.c.CommandTimeout = 5 * time.Second
	_ = s.c.Quit()
	s.close()
}

// pool keeps idle SMTP sessions per destination for reuse. A session goes
// back as soon as its transaction ends; whoever takes it out must send
// RSET first (as Postfix verifies a cached session), which both clears any
// aborted transaction and proves the connection is still alive right
// before it is used. Sessions idle longer than the timeout are closed with
// QUIT. Safe for concurrent use.
type pool struct {
	mu      sync.Mutex
	idle    map[string][]*session // most recently used last
	max     int
	timeout time.Duration
	closed  bool
	wg      sync.WaitGroup // background QUITs, for close
}

func newPool(max int, timeout time.Duration) *pool {
	p := &pool{idle: map[string][]*session{}, max: max, timeout: timeout}
	if max > 0 {
		go p.janitor()
	}
	return p
}

// get returns an idle session for key, or nil.
func (p *pool) get(key string) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[key]
	for len(list) > 0 {
		s := list[len(list)-1]
		list = list[:len(list)-1]
		if time.Since(s.idleSince) < p.timeout {
			p.store(key, list)
			s.reused = true
			return s
		}
		p.background(s.quit)
	}
	p.store(key, list)
	return nil
}

func (p *pool) store(key string, list []*session) {
	if len(list) == 0 {
		delete(p.idle, key)
	} else {
		p.idle[key] = list
	}
}

// release hands a session back after its transaction (finished or
// aborted). If the pool is full or closed the session is QUIT in the
// background. The caller must not touch s afterwards.
func (p *pool) release(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[s.key]) >= p.max {
		p.background(s.quit)
		return
	}
	s.idleSince = time.Now()
	p.idle[s.key] = append(p.idle[s.key], s)
}

// background runs f on its own goroutine, tracked for close.
func (p *pool) background(f func()) {
	p.wg.Add(1)
	go func() { defer p.wg.Done(); f() }()
}

// janitor closes sessions idle longer than the timeout.
func (p *pool) janitor() {
	tick := time.NewTicker(max(p.timeout/4, 250*time.Millisecond))
	defer tick.Stop()
	for range tick.C {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		for key, list := range p.idle {
			keep := list[:0]
			for _, s := range list {
				if time.Since(s.idleSince) >= p.timeout {
					p.background(s.quit)
				} else {
					keep = append(keep, s)
				}
			}
			p.store(key, keep)
		}
		p.mu.Unlock()
	}
}

// idleCount returns the number of idle sessions for key.
func (p *pool) idleCount(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[key])
}

// close QUITs every idle session and waits for background work.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	for key, list := range p.idle {
		for _, s := range list {
			p.background(s.quit)
		}
		delete(p.idle, key)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
