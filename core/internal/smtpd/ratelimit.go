package smtpd

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a token bucket per client (clientKey: an IPv4 address or
// an IPv6 /64): rate messages per period, up to burst at once. Behind a Tor onion service every client shares
// 127.0.0.1 and so one bucket: the limit is then per listener.
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	buckets map[netip.Addr]*bucket
	lastGC  time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newRateLimiter(messages int, per time.Duration, burst int) *rateLimiter {
	if burst <= 0 {
		burst = max(messages, 1)
	}
	return &rateLimiter{rate: float64(messages) / per.Seconds(), burst: float64(burst), buckets: map[netip.Addr]*bucket{}}
}

// allow takes one token for ip at time now.
func (l *rateLimiter) allow(ip netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastGC) > time.Minute {
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
				delete(l.buckets, k)
			}
		}
		l.lastGC = now
	}
	b, ok := l.buckets[ip]
	if !ok {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
