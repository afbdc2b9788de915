package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func TestMutualTLSWithPinnedKeysDeliversPacketAndNamesSender(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	type got struct {
		from sdk.NodeID
		data []byte
	}
	ch := make(chan got, 1)
	l := listen(t, tb, func(_ context.Context, from sdk.NodeID, p []byte) error {
		ch <- got{from, bytes.Clone(p)}
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	p := packet(1024, 7)
	if err := link.Send(context.Background(), p); err != nil {
		t.Fatalf("Send: %v", err)
	}
	g := <-ch
	if g.from != a.id {
		t.Errorf("handler saw sender %s, want %s", g.from.Short(), a.id.Short())
	}
	if !bytes.Equal(g.data, p) {
		t.Errorf("packet changed in transit")
	}
	waitFor(t, 2*time.Second, "listener to count 1 accepted, 1 frame, 1 ack", func() bool {
		s := tb.Stats()
		return s.Accepted == 1 && s.FramesReceived == 1 && s.AcksSent == 1
	})
	if s := ta.Stats(); s.Dials != 1 || s.FramesSent != 1 || s.Acks != 1 {
		t.Errorf("dialer stats: want 1 dial, 1 frame, 1 ack; got %+v", s)
	}
}

func TestDialerRefusesListenerPresentingAnotherKey(t *testing.T) {
	a, b, impostor := newNode(t), newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	// The listener at b's address holds another key.
	ti := newTransport(t, impostor, Config{PacketSize: 1024}, a)
	var calls atomic.Int64
	l := listen(t, ti, countingHandler(&calls))
	for _, name := range []string{"Dial", "Probe"} {
		var err error
		if name == "Dial" {
			_, err = ta.Dial(context.Background(), b.peer(l.Addr().String()))
		} else {
			err = ta.Probe(context.Background(), b.peer(l.Addr().String()))
		}
		if !errors.Is(err, ErrIdentity) {
			t.Errorf("%s to an impostor: want ErrIdentity, got %v", name, err)
		}
	}
	if s := ta.Stats(); s.WrongIdentity != 2 || s.Dials != 0 {
		t.Errorf("dialer stats: want 2 wrong identities, 0 dials; got %+v", s)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("impostor's handler called %d times, want 0", n)
	}
}

func TestListenerRefusesUnknownClientKey(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, c) // knows c, not a
	var calls atomic.Int64
	l := listen(t, tb, countingHandler(&calls))
	for _, name := range []string{"Dial", "Probe"} {
		var err error
		if name == "Dial" {
			_, err = ta.Dial(context.Background(), b.peer(l.Addr().String()))
		} else {
			err = ta.Probe(context.Background(), b.peer(l.Addr().String()))
		}
		if !errors.Is(err, ErrPeerRefused) {
			t.Errorf("%s with an unknown key: want ErrPeerRefused, got %v", name, err)
		}
	}
	waitFor(t, 5*time.Second, "listener to count the unknown key", func() bool { return tb.Stats().UnknownPeers == 2 })
	if s := tb.Stats(); s.Accepted != 0 || s.HandshakeErrors != 2 {
		t.Errorf("listener stats: want 0 accepted, 2 handshake errors; got %+v", s)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler called %d times, want 0", n)
	}
}

func TestPacketSizeMismatchIsRefusedAtHandshake(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 4096})
	tb := newTransport(t, b, Config{PacketSize: 8192}, a)
	var calls atomic.Int64
	l := listen(t, tb, countingHandler(&calls))
	_, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "packet-size=8192") {
		t.Fatalf("want ErrProtocol naming the peer's packet size, got %v", err)
	}
	if calls.Load() != 0 || tb.Stats().Accepted != 0 {
		t.Errorf("mismatched dialer was accepted")
	}
}

func TestEveryFrameIsExactlyPacketSizeAndEveryWordAckSize(t *testing.T) {
	for _, size := range []int{512, 16384, 65536, 70000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			a, b := newNode(t), newNode(t)
			var ra, rb frameRecorder
			ta := newTransport(t, a, Config{PacketSize: size, FrameLog: ra.log})
			tb := newTransport(t, b, Config{PacketSize: size, FrameLog: rb.log}, a)
			l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
			link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
			if err != nil {
				t.Fatal(err)
			}
			const n = 40
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := link.Send(context.Background(), packet(size, uint64(i))); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			// The listener logs a word after writing it: the last ack's
			// entry may trail the last Send.
			waitFor(t, 2*time.Second, "the listener's last ack entry", func() bool { return len(rb.get()) == 2*n+1 })
			want := map[Dir]int{FrameOut: size, AckIn: AckSize, FrameIn: size, AckOut: AckSize}
			count := map[Dir]int{}
			for _, e := range append(ra.get(), rb.get()...) {
				count[e.dir]++
				if e.size != want[e.dir] {
					t.Errorf("%s frame of %d bytes, want %d", e.dir, e.size, want[e.dir])
				}
			}
			// n acks plus the ready word.
			wantCount := map[Dir]int{FrameOut: n, FrameIn: n, AckOut: n + 1, AckIn: n + 1}
			for d, c := range wantCount {
				if count[d] != c {
					t.Errorf("%s: %d entries, want %d", d, count[d], c)
				}
			}
		})
	}
}

// An observer of the TCP stream sees, after the handshake, only records of
// one size in each direction: frames never differ on the wire.
func TestWireRecordsAreUniformAfterHandshake(t *testing.T) {
	a, b := newNode(t), newNode(t)
	var d recDialer
	ta := newTransport(t, a, Config{Dialer: &d})
	tb := newTransport(t, b, Config{}, a)
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	rc := d.conns[0]
	outAt, inAt := rc.lens() // end of handshake and ready word
	const n = 25
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := packet(DefaultPacketSize, uint64(i))
			if i%2 == 0 {
				clear(p) // all-zero packets look the same on the wire
			}
			if err := link.Send(context.Background(), p); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	out, in := rc.bytes()
	const appData = 23
	// 65536 = 4 records of 16384 bytes, each + 1 content type + 16 AEAD tag.
	checkRecords(t, "dialer->listener", parseRecords(t, out[outAt:]), 4*n, tlsRecord{appData, 16384 + 17})
	// Each ack: 8 bytes + 17.
	checkRecords(t, "listener->dialer", parseRecords(t, in[inAt:]), n, tlsRecord{appData, AckSize + 17})
}

func checkRecords(t *testing.T, dir string, rs []tlsRecord, n int, want tlsRecord) {
	t.Helper()
	if len(rs) != n {
		t.Errorf("%s: %d records, want %d", dir, len(rs), n)
	}
	for i, r := range rs {
		if r != want {
			t.Errorf("%s: record %d is type %d, %d bytes; want type %d, %d bytes", dir, i, r.typ, r.n, want.typ, want.n)
		}
	}
}

func TestSendReturnsOnlyAfterHandlerReturnedNil(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	release := make(chan struct{})
	var stored atomic.Bool
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, _ []byte) error {
		if err := wait(ctx, release); err != nil { // the core's sync
			return err
		}
		stored.Store(true)
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- link.Send(context.Background(), packet(1024, 1)) }()
	select {
	case err := <-done:
		t.Fatalf("Send returned (%v) while the handler had not stored the packet", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Send after the handler stored: %v", err)
	}
	if !stored.Load() {
		t.Fatal("Send returned nil before the handler stored the packet")
	}
}

func TestSendFailsWithNackWhenHandlerFailsAndLinkSurvives(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(_ context.Context, _ sdk.NodeID, p []byte) error {
		if p[7] == 1 {
			return errors.New("queue full")
		}
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); !errors.Is(err, ErrNack) {
		t.Fatalf("handler failed: want ErrNack, got %v", err)
	}
	if err := link.Send(context.Background(), packet(1024, 2)); err != nil {
		t.Fatalf("next packet after a nack: %v", err)
	}
	if s := ta.Stats(); s.Nacks != 1 || s.Acks != 1 || s.Dials != 1 {
		t.Errorf("want 1 nack, 1 ack on 1 connection; got %+v", s)
	}
	// The listener counts a word after writing it: the sender may be first.
	waitFor(t, 2*time.Second, "listener to count 1 nack and 1 ack sent", func() bool {
		s := tb.Stats()
		return s.NacksSent == 1 && s.AcksSent == 1
	})
}

// TestFullWordIsNeitherAckNorNack: a handler that refuses a frame with
// ErrFull sends the full word: Send returns ErrFull (not ErrNack, which
// the mix node counts against the peer), the connection carries on, and
// the word is as long as an ack (an observer of the link sees the same
// 8-byte record).
func TestFullWordIsNeitherAckNorNack(t *testing.T) {
	a, b := newNode(t), newNode(t)
	var rec frameRecorder
	ta := newTransport(t, a, Config{PacketSize: 1024, FrameLog: rec.log})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(_ context.Context, _ sdk.NodeID, p []byte) error {
		if p[7] == 1 {
			return fmt.Errorf("node at its bound: %w", ErrFull)
		}
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	err = link.Send(context.Background(), packet(1024, 1))
	if !errors.Is(err, ErrFull) || errors.Is(err, ErrNack) {
		t.Fatalf("handler refused with ErrFull: Send returned %v, want ErrFull", err)
	}
	if err := link.Send(context.Background(), packet(1024, 2)); err != nil {
		t.Fatalf("next packet after a full word: %v", err)
	}
	if s := ta.Stats(); s.Fulls != 1 || s.Nacks != 0 || s.Acks != 1 || s.Dials != 1 {
		t.Errorf("want 1 full, no nack, 1 ack on 1 connection; got %+v", s)
	}
	waitFor(t, 2*time.Second, "listener to count 1 full and 1 ack sent", func() bool {
		s := tb.Stats()
		return s.FullsSent == 1 && s.AcksSent == 1 && s.NacksSent == 0
	})
	words := 0
	for _, e := range rec.get() {
		if e.dir == AckIn {
			words++
			if e.size != AckSize {
				t.Errorf("word of %d bytes, want %d", e.size, AckSize)
			}
		}
	}
	if words != 3 { // ready, full, ack
		t.Errorf("%d words read, want 3", words)
	}
}

// TestProbeLearnsThatThePeerIsFull: a listener whose Config.Full reports
// true answers with the full ready word; ProbeFull says so, Probe still
// succeeds, and a link to it still carries frames (refusing them is the
// handler's business).
func TestProbeLearnsThatThePeerIsFull(t *testing.T) {
	a, b := newNode(t), newNode(t)
	var full atomic.Bool
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024, Full: full.Load}, a)
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	p := b.peer(l.Addr().String())
	for _, want := range []bool{false, true, false} {
		full.Store(want)
		got, err := ta.ProbeFull(context.Background(), p)
		if err != nil || got != want {
			t.Fatalf("ProbeFull with the peer full=%v: %v, %v", want, got, err)
		}
		if err := ta.Probe(context.Background(), p); err != nil {
			t.Fatalf("Probe with the peer full=%v: %v", want, err)
		}
	}
	full.Store(true)
	link, err := ta.Dial(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); err != nil {
		t.Fatalf("send on a link whose ready word said full: %v", err)
	}
}

// exactlyOnce is a handler that records which packet numbers arrived.
type exactlyOnce struct {
	mu   sync.Mutex
	seen map[uint64]int
	bad  int
}

func (e *exactlyOnce) handle(_ context.Context, _ sdk.NodeID, p []byte) error {
	n := binary.BigEndian.Uint64(p)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.seen == nil {
		e.seen = map[uint64]int{}
	}
	e.seen[n]++
	// packet() fills the rest at random; the tail carries a checksum here.
	if sum := sha256.Sum256(p[:len(p)-32]); !bytes.Equal(sum[:], p[len(p)-32:]) {
		e.bad++
	}
	return nil
}

func (e *exactlyOnce) check(t *testing.T, n int) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.bad != 0 {
		t.Errorf("%d packets corrupted", e.bad)
	}
	if len(e.seen) != n {
		t.Errorf("%d distinct packets arrived, want %d", len(e.seen), n)
	}
	for i := range uint64(n) {
		if e.seen[i] != 1 {
			t.Errorf("packet %d arrived %d times, want 1", i, e.seen[i])
		}
	}
}

func checkedPacket(size int, n uint64) []byte {
	p := packet(size, n)
	sum := sha256.Sum256(p[:size-32])
	copy(p[size-32:], sum[:])
	return p
}

func TestThousandPipelinedPacketsArriveExactlyOnce(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{})
	tb := newTransport(t, b, Config{}, a)
	var e exactlyOnce
	l := listen(t, tb, e.handle)
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	const n, senders = 1000, 64
	start := time.Now()
	var next atomic.Uint64
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
				if err := link.Send(context.Background(), checkedPacket(DefaultPacketSize, i)); err != nil {
					t.Errorf("packet %d: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d packets of %d bytes in %v", n, DefaultPacketSize, time.Since(start))
	e.check(t, n)
	if s := ta.Stats(); s.Dials != 1 || s.Acks != n {
		t.Errorf("want %d acks on 1 connection, got %+v", n, s)
	}
}

// The window lets Window frames wait in handlers at once (one RTT does not
// gate each packet) and never more.
func TestWindowKeepsExactlyWindowFramesInFlight(t *testing.T) {
	const window = 8
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, Window: window})
	tb := newTransport(t, b, Config{PacketSize: 1024, Window: window}, a)
	var running, peak atomic.Int64
	release := make(chan struct{})
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, _ []byte) error {
		r := running.Add(1)
		for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
		}
		defer running.Add(-1)
		return wait(ctx, release)
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 3 * window {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := link.Send(context.Background(), packet(1024, uint64(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, 5*time.Second, "a full window of handlers", func() bool { return running.Load() == window })
	time.Sleep(100 * time.Millisecond) // room for a frame beyond the window
	if p := peak.Load(); p != window {
		t.Errorf("peak handlers in flight %d, want %d", p, window)
	}
	close(release)
	wg.Wait()
}

func TestConcurrentSendsToSeveralPeers(t *testing.T) {
	const peers, senders, each = 3, 8, 40
	a := newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 2048, Window: 4})
	var targets []Peer
	var handlers []*exactlyOnce
	for range peers {
		b := newNode(t)
		tb := newTransport(t, b, Config{PacketSize: 2048, Window: 4}, a)
		e := &exactlyOnce{}
		l := listen(t, tb, e.handle)
		targets = append(targets, b.peer(l.Addr().String()))
		handlers = append(handlers, e)
	}
	var wg sync.WaitGroup
	for _, p := range targets {
		for s := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					// Dial every time, as the core may: the link is cached.
					link, err := ta.Dial(context.Background(), p)
					if err != nil {
						t.Error(err)
						return
					}
					if err := link.Send(context.Background(), checkedPacket(2048, uint64(s*each+i))); err != nil {
						t.Error(err)
					}
					if s == 0 && i%10 == 0 {
						if err := ta.Probe(context.Background(), p); err != nil {
							t.Error(err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	for _, e := range handlers {
		e.check(t, senders*each)
	}
	if s := ta.Stats(); s.Dials != peers {
		t.Errorf("want one cached connection per peer (%d dials), got %d", peers, s.Dials)
	}
}

func TestWrongSizeSendIsRefusedAndNothingIsWritten(t *testing.T) {
	a, b := newNode(t), newNode(t)
	var ra frameRecorder
	ta := newTransport(t, a, Config{PacketSize: 1024, FrameLog: ra.log})
	var calls atomic.Int64
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, countingHandler(&calls))
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		p    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"one short", make([]byte, 1023)},
		{"one long", make([]byte, 1025)},
		{"two packets", make([]byte, 2048)},
	}
	for _, c := range cases {
		if err := link.Send(context.Background(), c.p); !errors.Is(err, ErrPacketSize) {
			t.Errorf("%s: want ErrPacketSize, got %v", c.name, err)
		}
	}
	for _, e := range ra.get() {
		if e.dir == FrameOut {
			t.Errorf("a frame of %d bytes was written", e.size)
		}
	}
	if s := ta.Stats(); s.WrongSize != uint64(len(cases)) || s.FramesSent != 0 {
		t.Errorf("want %d refused sends and 0 frames, got %+v", len(cases), s)
	}
	if err := link.Send(context.Background(), make([]byte, 1024)); err != nil {
		t.Errorf("a right-size packet after the refusals: %v", err)
	}
	if calls.Load() != 1 {
		t.Errorf("handler called %d times, want 1", calls.Load())
	}
}

func TestGarbageFromRawTCPClientIsDropped(t *testing.T) {
	a, b := newNode(t), newNode(t)
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	var calls atomic.Int64
	l := listen(t, tb, countingHandler(&calls))
	cases := []struct {
		name string
		data []byte
	}{
		{"binary junk", bytes.Repeat([]byte{0x00, 0xff, 0x13, 0x37}, 250)},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"tls record header then junk", append([]byte{22, 3, 1, 0xff, 0xff}, packet(300, 0)...)},
		{"tls header of a 64 KiB record", append([]byte{22, 3, 3, 0xff, 0xff}, make([]byte, 65535)...)},
		{"smtp", []byte("EHLO x\r\n")},
	}
	for i, c := range cases {
		conn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(c.data)
		if !closedWithin(conn, 5*time.Second) {
			t.Errorf("%s: connection still open after 5 s", c.name)
		}
		conn.Close()
		waitFor(t, 5*time.Second, "handshake error count", func() bool { return tb.Stats().HandshakeErrors == uint64(i+1) })
	}
	if calls.Load() != 0 {
		t.Errorf("handler called %d times on garbage", calls.Load())
	}
	// The listener still serves real nodes.
	ta := newTransport(t, a, Config{PacketSize: 1024})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatalf("after garbage: %v", err)
	}
	if err := link.Send(context.Background(), packet(1024, 0)); err != nil {
		t.Fatalf("after garbage: %v", err)
	}
}

func TestSilentClientIsDroppedAtHandshakeTimeout(t *testing.T) {
	b := newNode(t)
	tb := newTransport(t, b, Config{PacketSize: 1024, HandshakeTimeout: 200 * time.Millisecond})
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if !closedWithin(conn, 3*time.Second) {
		t.Fatal("silent client still connected after 3 s (handshake timeout 200 ms)")
	}
	waitFor(t, time.Second, "timeout count", func() bool { return tb.Stats().Timeouts == 1 })
}

// At MaxHandshakes a new connection closes the oldest handshake in
// progress, not itself: the newest is the one most likely to be a peer.
func TestHandshakeLimitClosesTheOldestHandshake(t *testing.T) {
	b := newNode(t)
	tb := newTransport(t, b, Config{PacketSize: 1024, MaxHandshakes: 2})
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		time.Sleep(100 * time.Millisecond) // accepted, in its handshake
	}
	if !closedWithin(conns[0], 2*time.Second) {
		t.Error("the oldest handshake was kept beyond MaxHandshakes")
	}
	if closedWithin(conns[2], 100*time.Millisecond) || closedWithin(conns[1], 100*time.Millisecond) {
		t.Error("a newer handshake was closed")
	}
	if n := tb.Stats().LimitDrops; n != 1 {
		t.Errorf("want 1 limit drop, got %d", n)
	}
}

// TestIdleConnectionsNeverLockPeersOut: 70 TCP connections that never
// send a byte, re-opened 100 ms after they are closed, from the peers' own
// address (as behind a Tor onion service) and from another one, never
// keep a peer from probing the node or sending a packet to it.
func TestIdleConnectionsNeverLockPeersOut(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, HandshakeTimeout: 2 * time.Second})
	got := make(chan []byte, 16)
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(_ context.Context, _ sdk.NodeID, p []byte) error {
		got <- append([]byte{}, p...)
		return nil
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for i := range 70 {
		src := "127.0.0.1"
		if i%2 == 1 {
			src = "127.0.0.2"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", l.Addr().String())
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				closedWithin(c, time.Minute) // holds it until the node closes it
				c.Close()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	defer wg.Wait()
	defer stop()
	time.Sleep(500 * time.Millisecond) // the idle connections fill the table
	p := b.peer(l.Addr().String())
	for i := range 5 {
		if err := ta.Probe(context.Background(), p); err != nil {
			t.Fatalf("probe %d with 70 idle connections on the mix port: %v", i, err)
		}
	}
	link, err := ta.Dial(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := link.Send(sctx, packet(1024, 7)); err != nil {
		t.Fatalf("send with 70 idle connections on the mix port: %v", err)
	}
	<-got
}

// A new connection of a node evicts only an idle one: probes never cut a
// link whose frames are in the handler.
func TestBusyConnectionIsNotEvictedByANewOne(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024, MaxConnsPerPeer: 1}, a)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, _ []byte) error {
		entered <- struct{}{}
		return wait(ctx, release)
	})
	p := b.peer(l.Addr().String())
	link, err := ta.Dial(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- link.Send(context.Background(), packet(1024, 1)) }()
	<-entered
	if err := ta.Probe(context.Background(), p); !errors.Is(err, ErrPeerRefused) {
		t.Errorf("probe while the only allowed connection is busy: want ErrPeerRefused, got %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the busy link was cut: %v", err)
	}
	// Now idle: a probe may replace it.
	if err := ta.Probe(context.Background(), p); err != nil {
		t.Errorf("probe with an idle connection in place: %v", err)
	}
}

// An authenticated peer that starts a frame and stalls, or cuts it, is
// disconnected, and the cut frame never reaches the handler.
func TestStalledOrCutFrameDisconnectsPeer(t *testing.T) {
	cases := []struct {
		name  string
		after func(net.Conn)
		stat  func(Stats) uint64
	}{
		{"stall", func(net.Conn) {}, func(s Stats) uint64 { return s.Timeouts }},
		{"cut", func(c net.Conn) { c.Close() }, func(s Stats) uint64 { return s.ProtocolErrors }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := newNode(t), newNode(t)
			ta := newTransport(t, a, Config{PacketSize: 4096})
			tb := newTransport(t, b, Config{PacketSize: 4096, FrameTimeout: 200 * time.Millisecond}, a)
			var calls atomic.Int64
			l := listen(t, tb, countingHandler(&calls))
			conn := rawTLS(t, ta, l.Addr().String(), b.pub)
			if _, err := conn.Write(make([]byte, 4096+2048)); err != nil { // one frame and a half
				t.Fatal(err)
			}
			c.after(conn)
			if c.name == "stall" && !closedWithin(conn, 3*time.Second) {
				t.Fatal("stalled peer still connected after 3 s (frame timeout 200 ms)")
			}
			waitFor(t, 3*time.Second, "the listener to count it", func() bool { return c.stat(tb.Stats()) == 1 })
			waitFor(t, 3*time.Second, "the connection to close", func() bool { return tb.Stats().ConnsIn == 0 })
			if n := calls.Load(); n != 1 {
				t.Errorf("handler called %d times, want 1 (the complete frame only)", n)
			}
		})
	}
}

func TestListenerKeepsAtMostMaxConnsPerPeerClosingTheOldest(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024, MaxConnsPerPeer: 2}, a)
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	var conns []net.Conn
	for range 3 {
		conns = append(conns, rawTLS(t, ta, l.Addr().String(), b.pub))
		time.Sleep(10 * time.Millisecond) // distinct start times
	}
	if !closedWithin(conns[0], 2*time.Second) {
		t.Error("the oldest connection was kept beyond MaxConnsPerPeer")
	}
	for i, c := range conns[1:] {
		if closedWithin(c, 100*time.Millisecond) {
			t.Errorf("connection %d closed, want kept", i+1)
		}
	}
}

func TestRedialAfterListenerRestart(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, BackoffMin: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	var calls atomic.Int64
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l, err := tb.Listen("127.0.0.1:0", countingHandler(&calls))
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	link, err := ta.Dial(context.Background(), b.peer(addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	waitFor(t, 5*time.Second, "the link to notice", func() bool { return ta.Stats().ConnsOut == 0 })
	if err := link.Send(context.Background(), packet(1024, 2)); err == nil {
		t.Fatal("Send succeeded with the listener down")
	}
	l2 := listen(t, tb, countingHandler(&calls))
	if l2.Addr().String() != addr {
		l2.Close()
		l2, err = tb.Listen(addr, countingHandler(&calls))
		if err != nil {
			t.Fatalf("restart on %s: %v", addr, err)
		}
		defer l2.Close()
	}
	var last error
	waitFor(t, 5*time.Second, "a send after the restart", func() bool {
		last = link.Send(context.Background(), packet(1024, 3))
		return last == nil
	})
	if calls.Load() != 2 {
		t.Errorf("handler called %d times, want 2", calls.Load())
	}
	if s := ta.Stats(); s.Dials != 2 {
		t.Errorf("want 2 dials (first and redial), got %d", s.Dials)
	}
}

func TestFailedDialBacksOffThenRetries(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, BackoffMin: 150 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	p := b.peer(addr)
	if _, err := ta.Dial(context.Background(), p); err == nil || errors.Is(err, ErrBackoff) {
		t.Fatalf("first dial: want a connection error, got %v", err)
	}
	if _, err := ta.Dial(context.Background(), p); !errors.Is(err, ErrBackoff) {
		t.Fatalf("second dial at once: want ErrBackoff, got %v", err)
	}
	if n := ta.Stats().DialErrors; n != 1 {
		t.Fatalf("backoff must not dial: %d dial errors, want 1", n)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := ta.Dial(context.Background(), p); err == nil || errors.Is(err, ErrBackoff) {
		t.Fatalf("dial after the backoff: want a connection error, got %v", err)
	}
	if n := ta.Stats().DialErrors; n != 2 {
		t.Fatalf("after the backoff: %d dial errors, want 2", n)
	}
}

func TestProbeCompletesHandshakeWithoutSendingFrames(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	var rb frameRecorder
	tb := newTransport(t, b, Config{PacketSize: 1024, FrameLog: rb.log}, a)
	var calls atomic.Int64
	l := listen(t, tb, countingHandler(&calls))
	if err := ta.Probe(context.Background(), b.peer(l.Addr().String())); err != nil {
		t.Fatalf("probe: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down := ln.Addr().String()
	ln.Close()
	if err := ta.Probe(context.Background(), b.peer(down)); err == nil {
		t.Error("probe of a closed port succeeded")
	}
	if err := ta.Probe(context.Background(), b.peer(down)); errors.Is(err, ErrBackoff) {
		t.Error("a probe must always dial, never back off")
	}
	waitFor(t, 2*time.Second, "the probe connection to close", func() bool { return tb.Stats().ConnsIn == 0 })
	if s := ta.Stats(); s.Probes != 1 || s.ConnsOut != 0 {
		t.Errorf("want 1 probe and no connection left, got %+v", s)
	}
	for _, e := range rb.get() {
		if e.dir == FrameIn {
			t.Error("a probe sent a frame")
		}
	}
	if calls.Load() != 0 {
		t.Error("a probe called the handler")
	}
}

func TestIdleLinkIsClosedThenRedialled(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, IdleTimeout: 100 * time.Millisecond})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "idle close on both ends", func() bool { return ta.Stats().ConnsOut == 0 && tb.Stats().ConnsIn == 0 })
	if err := link.Send(context.Background(), packet(1024, 2)); err != nil {
		t.Fatalf("send after idle close: %v", err)
	}
	if s := ta.Stats(); s.Dials != 2 || s.Timeouts != 0 {
		t.Errorf("want 2 dials and no timeouts, got %+v", s)
	}
	if s := tb.Stats(); s.ProtocolErrors != 0 || s.Timeouts != 0 {
		t.Errorf("idle close must be clean for the listener, got %+v", s)
	}
}

func TestAckTimeoutClosesStalledLink(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, AckTimeout: 200 * time.Millisecond})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, _ []byte) error {
		<-ctx.Done() // a core that never syncs
		return ctx.Err()
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = link.Send(context.Background(), packet(1024, 1))
	if !errors.Is(err, ErrAckTimeout) {
		t.Fatalf("want ErrAckTimeout, got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %v with a 200 ms ack timeout", d)
	}
	if s := ta.Stats(); s.Timeouts != 1 || s.ConnsOut != 0 {
		t.Errorf("want 1 timeout and the connection closed, got %+v", s)
	}
}

func TestCancelledSendLeavesLinkUsable(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	release := make(chan struct{})
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, p []byte) error {
		if p[7] == 1 {
			return wait(ctx, release)
		}
		return nil
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := link.Send(ctx, packet(1024, 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
	close(release) // its ack now arrives for nobody
	if err := link.Send(context.Background(), packet(1024, 2)); err != nil {
		t.Fatalf("send after a cancelled one: %v", err)
	}
	if s := ta.Stats(); s.Dials != 1 || s.ProtocolErrors != 0 {
		t.Errorf("the late ack must be ignored on the same connection, got %+v", s)
	}
}

func TestDialRefusesInvalidPeer(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	cases := []struct {
		name string
		p    Peer
	}{
		{"short key", Peer{ID: b.id, Address: "127.0.0.1:1", Identity: b.pub[:31]}},
		{"id of another key", Peer{ID: c.id, Address: "127.0.0.1:1", Identity: b.pub}},
		{"no address", Peer{ID: b.id, Identity: b.pub}},
	}
	for _, tc := range cases {
		if _, err := ta.Dial(context.Background(), tc.p); err == nil {
			t.Errorf("%s: Dial accepted it", tc.name)
		}
		if err := ta.Probe(context.Background(), tc.p); err == nil {
			t.Errorf("%s: Probe accepted it", tc.name)
		}
	}
	if n := ta.Stats().DialErrors; n != 0 {
		t.Errorf("invalid peers must not be dialled: %d dial errors", n)
	}
}

func TestPeerChangeMovesTheLink(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	var old, moved atomic.Int64
	l1 := listen(t, newTransport(t, b, Config{PacketSize: 1024}, a), countingHandler(&old))
	l2 := listen(t, newTransport(t, b, Config{PacketSize: 1024}, a), countingHandler(&moved))
	link, err := ta.Dial(context.Background(), b.peer(l1.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); err != nil {
		t.Fatal(err)
	}
	link2, err := ta.Dial(context.Background(), b.peer(l2.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if link2 != link {
		t.Error("a new address made a second link for the same node")
	}
	if err := link.Send(context.Background(), packet(1024, 2)); err != nil {
		t.Fatal(err)
	}
	if old.Load() != 1 || moved.Load() != 1 {
		t.Errorf("packets at old/new address: %d/%d, want 1/1", old.Load(), moved.Load())
	}
}

func TestCloseFailsSendsInFlightAndLaterCalls(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	entered := make(chan struct{}, 1)
	l := listen(t, tb, func(ctx context.Context, _ sdk.NodeID, _ []byte) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- link.Send(context.Background(), packet(1024, 1)) }()
	<-entered
	ta.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Send in flight returned nil after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send in flight still blocked 5 s after Close")
	}
	if err := link.Send(context.Background(), packet(1024, 2)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: want ErrClosed, got %v", err)
	}
	if _, err := ta.Dial(context.Background(), b.peer(l.Addr().String())); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial after Close: want ErrClosed, got %v", err)
	}
	// Listener.Close cancels the handler's context and waits for it.
	if err := l.Close(); err != nil {
		t.Errorf("listener close: %v", err)
	}
}

func TestConfigRejectsInvalidValues(t *testing.T) {
	a := newNode(t)
	cases := []struct {
		name string
		cfg  Config
	}{
		{"no identity", Config{}},
		{"packet size above max", Config{Identity: a.priv, PacketSize: MaxPacketSize + 1}},
		{"negative packet size", Config{Identity: a.priv, PacketSize: -1}},
		{"window above max", Config{Identity: a.priv, Window: MaxWindow + 1}},
		{"negative timeout", Config{Identity: a.priv, AckTimeout: -time.Second}},
		{"backoff min above max", Config{Identity: a.priv, BackoffMin: time.Hour, BackoffMax: time.Second}},
	}
	for _, c := range cases {
		if tr, err := NewDirect(c.cfg); err == nil {
			tr.Close()
			t.Errorf("%s: accepted", c.name)
		}
	}
	tr, err := NewDirect(Config{Identity: a.priv})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.Listen("127.0.0.1:0", func(context.Context, sdk.NodeID, []byte) error { return nil }); err == nil {
		t.Error("Listen without Lookup accepted")
	}
}

func TestFrameLogWriterWritesOneLinePerFrame(t *testing.T) {
	var buf bytes.Buffer
	a, b := newNode(t), newNode(t)
	ta := newTransport(t, a, Config{PacketSize: 1024, FrameLog: FrameLogWriter(&buf)})
	tb := newTransport(t, b, Config{PacketSize: 1024}, a)
	l := listen(t, tb, func(context.Context, sdk.NodeID, []byte) error { return nil })
	link, err := ta.Dial(context.Background(), b.peer(l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := link.Send(context.Background(), packet(1024, 1)); err != nil {
		t.Fatal(err)
	}
	// The ack may be read before the writer logs its frame: compare sorted,
	// each line without its time stamp (checked to be a plausible time).
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("frame log line %q: want 4 fields", l)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || time.Since(time.Unix(0, ns)).Abs() > time.Minute {
			t.Fatalf("frame log line %q: second field is not the time in ns", l)
		}
		lines[i] = f[0] + " " + f[2] + " " + f[3]
	}
	sort.Strings(lines)
	got := strings.Join(lines, "\n")
	want := fmt.Sprintf("ack-in %s 8\nack-in %s 8\nout %s 1024", b.id, b.id, b.id)
	if got != want {
		t.Errorf("frame log:\nwant %q\ngot  %q", want, got)
	}
}

// TestHandshakeLimitPerSourceGroupsAnIPv6Slash64: idle connections from
// three addresses of one IPv6 /64 count as one source, so with
// MaxHandshakesPerSource 2 the third closes the first, while one from
// another /64 is left alone. The listener and the clients run in a
// network namespace of the test's own, where lo carries these addresses.
func TestHandshakeLimitPerSourceGroupsAnIPv6Slash64(t *testing.T) {
	b := newNode(t)
	tb := newTransport(t, b, Config{PacketSize: 1024, MaxHandshakesPerSource: 2})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is left in the namespace: it ends with the goroutine.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"-6", "addr", "add", "2001:db8:1::1/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:1::2/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:1::3/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:1::4/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:2::1/64", "dev", "lo", "nodad"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Errorf("ip %v: %v %s", args, err, out)
				return
			}
		}
		l, err := tb.Listen("[2001:db8:1::1]:0", func(context.Context, sdk.NodeID, []byte) error { return nil })
		if err != nil {
			t.Errorf("Listen: %v", err)
			return
		}
		defer l.Close()
		var conns []net.Conn
		for _, src := range []string{"2001:db8:2::1", "2001:db8:1::2", "2001:db8:1::3", "2001:db8:1::4"} {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c, err := d.Dial("tcp", l.Addr().String())
			// The kernel may take a moment to route new addresses.
			for end := time.Now().Add(5 * time.Second); errors.Is(err, syscall.ENETUNREACH) && time.Now().Before(end); {
				time.Sleep(50 * time.Millisecond)
				c, err = d.Dial("tcp", l.Addr().String())
			}
			if err != nil {
				t.Errorf("dial from %s: %v", src, err)
				return
			}
			defer c.Close()
			conns = append(conns, c)
			time.Sleep(100 * time.Millisecond) // accepted, in its handshake
		}
		if !closedWithin(conns[1], 2*time.Second) {
			t.Error("a third idle connection from one /64 did not close its oldest")
		}
		for i, c := range []net.Conn{conns[0], conns[2], conns[3]} {
			if closedWithin(c, 100*time.Millisecond) {
				t.Errorf("connection %d closed", i)
			}
		}
	}()
	<-done
	if n := tb.Stats().LimitDrops; n != 1 {
		t.Errorf("want 1 limit drop, got %d", n)
	}
}
