package wire

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"

	"github.com/mixmta/mixmta/internal/pb"
)

// TestPoolCodecDoesNotAliasPooledBuffers: a 64 KiB packet goes through
// Codec both ways; after the buffers went back to BufPool and were
// handed out again and overwritten, the decoded packet is unchanged. A
// codec that let the message refer to a pooled buffer (no copy on
// Unmarshal) would hand the next call's bytes to this one.
func TestPoolCodecDoesNotAliasPooledBuffers(t *testing.T) {
	packet := bytes.Repeat([]byte("sphinx packet "), 65536/14+1)[:65536]
	want := bytes.Clone(packet)
	var c Codec
	wire, err := c.Marshal(&pb.MixReply{Packet: packet})
	if err != nil {
		t.Fatal(err)
	}
	// Split the encoding over several pooled buffers, as frames arrive.
	flat := wire.Materialize()
	wire.Free()
	var in mem.BufferSlice
	for off := 0; off < len(flat); off += 16 << 10 {
		b := BufPool.Get(min(16<<10, len(flat)-off))
		copy(*b, flat[off:])
		in = append(in, mem.NewBuffer(b, BufPool))
	}
	var got pb.MixReply
	if err := c.Unmarshal(in, &got); err != nil {
		t.Fatal(err)
	}
	in.Free()
	for range 8 { // reuse whatever went back to the pool
		for _, size := range []int{16 << 10, len(flat)} {
			b := BufPool.Get(size)
			for i := range *b {
				(*b)[i] = 0xAA
			}
			BufPool.Put(b)
		}
	}
	if !bytes.Equal(got.GetPacket(), want) {
		t.Fatal("decoded packet changed after its buffers were reused")
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Fatal("Marshal of a non-message: no error")
	}
}

// TestBufPoolSizes: Get returns the length asked for, from the size class
// that holds it, and Put keeps only buffers of a class's capacity.
func TestBufPoolSizes(t *testing.T) {
	for _, n := range []int{0, 1, 2, 255, 256, 257, 16 << 10, 65536 + 40, 1 << 20} {
		b := BufPool.Get(n)
		if len(*b) != n || cap(*b) < n || cap(*b) >= 2*max(n, 1) {
			t.Fatalf("Get(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		BufPool.Put(b)
	}
	odd := make([]byte, 100)
	BufPool.Put(&odd) // not a class capacity: ignored, no panic
}
