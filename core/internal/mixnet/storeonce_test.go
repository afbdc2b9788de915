package mixnet_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/sdk"
)

// sealedPackets counts the distinct sealed values of at least one packet's
// size in the raw bytes of every file under dir, as a forensic scan of the
// disk would find them (the queue's sealed value header: "mxq1", owner 16
// bytes, part 4 bytes, ciphertext length 4 bytes, big-endian). badger
// keeps what was written in its value log until GC, so this counts the
// packet-sized values ever written, deleted or not.
func sealedPackets(t *testing.T, dir string) int {
	t.Helper()
	seen := map[[20]byte]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for off := 0; ; {
			i := bytes.Index(raw[off:], []byte("mxq1"))
			if i < 0 || off+i+28 > len(raw) {
				return nil
			}
			h := raw[off+i : off+i+28]
			if n := binary.BigEndian.Uint32(h[24:]); n >= packetSize {
				var id [20]byte
				copy(id[:], h[4:24])
				seen[id] = true
			}
			off += i + 4
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(seen)
}

// A forwarded packet is stored once: the packet as received, before its
// ack, and no second sealed copy in its forward form after the unwrap
// (the forward item takes the received packet over; its forward form
// stays in memory). After a restart, when that memory is gone, the forward
// form is derived again by the mixer from the stored packet: the packets
// waiting in the pool across the restart leave unwrapped, for the next hop
// the packet names, and the exit reads the messages behind them. With no
// room in memory (a long pool, a backlog) the forward form is stored
// sealed instead, and the packets leave after the restart just as well.
func TestForwardedPacketIsStoredOnceAndSentAfterRestart(t *testing.T) {
	t.Run("in memory", func(t *testing.T) { storedOnceAndSent(t, 0, 1) })
	t.Run("memory full", func(t *testing.T) { storedOnceAndSent(t, -1, 2) })
}

// storedOnceAndSent forwards packets with the node's packet memory bounded
// by cacheLimit (0: the default) and wants perPacket sealed packet-sized
// values written for each.
func storedOnceAndSent(t *testing.T, cacheLimit int64, perPacket int) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	// Long enough that the packets still wait when the node stops.
	const hopDelay = 8 * time.Second
	h := startNode(t, net, u, nodeOptions{hopDelay: hopDelay})
	if cacheLimit != 0 {
		mixnet.SetCacheLimit(h.node, cacheLimit)
	}
	sender := peer(t, net, s, 2, now, u, x)
	const n = 3
	var msgs [][]byte
	var pkts [][]byte
	for i := range n {
		m := testMessage(1000 + i)
		p := route(t, sender, m, u.ID())
		if len(p) != 1 {
			t.Fatalf("%d packets for %d bytes, want 1", len(p), len(m.Body))
		}
		msgs, pkts = append(msgs, m.Body), append(pkts, p[0])
	}
	start := time.Now()
	for _, p := range pkts {
		h.receive(s, p)
	}
	eventually(t, "the packets waiting in the pool", func() bool { return h.eng.Delayed() == n })
	h.stop()
	if time.Since(start) >= hopDelay || len(h.links.all()) != 0 {
		t.Fatalf("%d packets sent before the restart (the machine took %v for %d packets): the test needs them waiting", len(h.links.all()), time.Since(start), n)
	}
	if got := sealedPackets(t, h.qdir); got != perPacket*n {
		t.Errorf("%d packet-sized sealed values written for %d forwarded packets, want %d", got, n, perPacket*n)
	}

	h.start()
	eventually(t, "the packets sent after the restart", func() bool { return len(h.links.all()) == n })
	exit := peer(t, net, x, 2, now)
	found := map[int]bool{}
	for _, out := range h.links.all() {
		if out.to != x.ID() || len(out.data) != packetSize {
			t.Fatalf("sent %d bytes to %s, want %d to the exit", len(out.data), out.to.Short(), packetSize)
		}
		res, err := exit.Mix(context.Background(), out.data)
		if err != nil {
			t.Fatalf("the exit cannot unwrap a packet sent after the restart: %v", err)
		}
		if res.Action != sdk.MixExit || res.Fragment == nil {
			t.Fatalf("exit result: action %d, fragment %v; want an exit fragment", res.Action, res.Fragment)
		}
		got, err := exit.Assemble(context.Background(), res.Fragment.Data)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range msgs {
			if bytes.Equal(got.Body, b) {
				found[i] = true
			}
		}
	}
	if len(found) != n {
		t.Errorf("the exit read %d of the %d messages", len(found), n)
	}
	if st := &h.node.Stats; st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		t.Errorf("stats after the restart: %s; want nothing dropped", h.node.StatsLine())
	}
	h.settled()
}
