package sphinx

import (
	"crypto/rand"
	"runtime"
	"testing"
)

// cpuMeter reports, besides ns/op (wall clock), "cpu-ns/op": the CPU time of
// the benchmark's own OS thread per operation (Linux only), which stays
// meaningful on a loaded machine.
type cpuMeter struct {
	b     *testing.B
	start int64
	ok    bool
}

func startCPUMeter(b *testing.B) *cpuMeter {
	runtime.LockOSThread()
	t, ok := threadCPUTime()
	return &cpuMeter{b: b, start: int64(t), ok: ok}
}

func (m *cpuMeter) stop() {
	t, ok := threadCPUTime()
	runtime.UnlockOSThread()
	if ok && m.ok && m.b.N > 0 {
		m.b.ReportMetric(float64(int64(t)-m.start)/float64(m.b.N), "cpu-ns/op")
	}
}

// BenchmarkNewPacket creates a 3-hop packet in the default geometry (64 KiB)
// with a full payload.
func BenchmarkNewPacket(b *testing.B) {
	g := DefaultGeometry()
	path := pathOf(makeNodes(b, 3))
	payload := make([]byte, g.PayloadSize())
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	m := startCPUMeter(b)
	for b.Loop() {
		if _, err := NewPacket(g, path, Exit, payload, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkUnwrap processes the first hop (Forward: ECDH, blinding, payload
// layer, i.e. the most work a hop does) of a 3-hop 64 KiB packet. Each
// iteration also copies the 64 KiB packet into the work buffer (about
// 1.5 µs), because Unwrap works in place.
func BenchmarkUnwrap(b *testing.B) {
	g := DefaultGeometry()
	nodes := makeNodes(b, 3)
	pkt, err := NewPacket(g, pathOf(nodes), Exit, make([]byte, 1000), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, len(pkt))
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	// The key is parsed once, as a node does at its epoch's start (parsing
	// computes the public key: a scalar multiplication of its own).
	key := mk(nodes[0].priv)
	m := startCPUMeter(b)
	for b.Loop() {
		copy(buf, pkt)
		res, err := Unwrap(g, key, buf)
		if err != nil || res.Action != Forward {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkUnwrapExit processes the last hop (Exit: no blinding).
func BenchmarkUnwrapExit(b *testing.B) {
	g := DefaultGeometry()
	nodes := makeNodes(b, 1)
	pkt, err := NewPacket(g, pathOf(nodes), Exit, make([]byte, 1000), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, len(pkt))
	b.SetBytes(int64(g.PacketSize))
	b.ReportAllocs()
	key := mk(nodes[0].priv)
	m := startCPUMeter(b)
	for b.Loop() {
		copy(buf, pkt)
		if res, err := Unwrap(g, key, buf); err != nil || res.Action != Exit {
			b.Fatal(err)
		}
	}
	m.stop()
}

// Building blocks, for profiling: one X25519 (blinding ladder) and one
// AES-256-GCM open of a default payload region.
func BenchmarkX25519(b *testing.B) {
	var k, u, out [32]byte
	rand.Read(k[:])
	u[0] = 9
	m := startCPUMeter(b)
	for b.Loop() {
		x25519(&out, &k, &u)
	}
	m.stop()
}

func BenchmarkPayloadLayer(b *testing.B) {
	g := DefaultGeometry()
	L := g.payloadRegion()
	var key [32]byte
	aead := payloadAEAD(&key)
	sealed := aead.Seal(nil, payloadNonce[:], make([]byte, L), nil)
	buf := make([]byte, len(sealed))
	b.SetBytes(int64(L))
	m := startCPUMeter(b)
	for b.Loop() {
		copy(buf, sealed)
		if _, err := payloadAEAD(&key).Open(buf[:0], payloadNonce[:], buf, nil); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}
