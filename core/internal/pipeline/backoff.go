package pipeline

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"time"
)

// Backoff is the retry schedule for temporary delivery failures. The
// default follows pluto2: up to 9 attempts, attempt n (0-based) waits
// 2^(n+1) s (2 s, 4 s, ... 512 s) with ±20 % jitter, each wait capped at
// Max, and nothing older than the queue's maximum lifetime is retried.
type Backoff struct {
	// MaxAttempts: attempts in all, the first one included.
	MaxAttempts int
	// Base and Factor: wait n is Base*Factor^n.
	Base   time.Duration
	Factor float64
	// Max caps one wait.
	Max time.Duration
	// Jitter multiplies each wait by a uniform factor in [1-J, 1+J].
	Jitter float64
	// Schedule, if not empty, gives the waits explicitly; the last repeats.
	Schedule []time.Duration
}

// DefaultBackoff is pluto2's schedule.
func DefaultBackoff() Backoff {
	return Backoff{MaxAttempts: 9, Base: 2 * time.Second, Factor: 2, Max: time.Hour, Jitter: 0.2}
}

// Nominal returns the wait after failed attempt n (0-based) before jitter,
// and false when no attempt is left (n+1 >= MaxAttempts).
func (b Backoff) Nominal(n int) (time.Duration, bool) {
	if n+1 >= b.MaxAttempts {
		return 0, false
	}
	var d time.Duration
	if len(b.Schedule) > 0 {
		d = b.Schedule[min(n, len(b.Schedule)-1)]
	} else {
		f := float64(b.Base) * math.Pow(b.Factor, float64(n))
		if f > float64(math.MaxInt64/2) {
			f = float64(math.MaxInt64 / 2)
		}
		d = time.Duration(f)
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d, true
}

// Wait is Nominal with jitter drawn from crypto/rand (an observer should
// not learn retry times from a predictable generator).
func (b Backoff) Wait(n int) (time.Duration, bool) {
	d, ok := b.Nominal(n)
	if !ok || b.Jitter <= 0 {
		return d, ok
	}
	u := cryptoFloat() // [0,1)
	return time.Duration(float64(d) * (1 - b.Jitter + 2*b.Jitter*u)), true
}

// cryptoFloat returns a uniform float64 in [0, 1) from crypto/rand.
func cryptoFloat() float64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return float64(binary.LittleEndian.Uint64(b[:])>>11) / (1 << 53)
}

// cryptoIntn returns a uniform int in [0, n) from crypto/rand.
func cryptoIntn(n int) int {
	if n <= 1 {
		return 0
	}
	// Rejection sampling avoids modulo bias.
	limit := math.MaxUint64 - math.MaxUint64%uint64(n)
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		v := binary.LittleEndian.Uint64(b[:])
		if v < limit {
			return int(v % uint64(n))
		}
	}
}
