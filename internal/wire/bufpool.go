package wire

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// dirtyPool is the gRPC buffer pool of both ends of the plugin protocol.
// grpc-go's default pool clears every buffer it hands out, up to the
// capacity of its size class: a 64 KiB packet or body chunk then costs a
// memclr of 128 KiB on each side of every call (measured: the largest
// single cost of a mix node's Mix call). gRPC writes a buffer before it
// reads it, so the clearing buys nothing; the bytes left over are the
// same process's own earlier calls.
type dirtyPool struct {
	classes [33]sync.Pool // class c holds buffers of capacity 1<<c
}

var _ mem.BufferPool = (*dirtyPool)(nil)

// BufPool is shared by every client and server of this process.
var BufPool = &dirtyPool{}

func class(size int) int {
	if size <= 1 {
		return 0
	}
	return bits.Len(uint(size - 1))
}

// Get returns a buffer of length size (contents undefined).
func (p *dirtyPool) Get(size int) *[]byte {
	c := class(size)
	if c >= len(p.classes) {
		b := make([]byte, size)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<c)
	return &b
}

// Put returns a buffer obtained from Get.
func (p *dirtyPool) Put(b *[]byte) {
	c := class(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<c {
		return // not one of ours
	}
	p.classes[c].Put(b)
}

// Codec is the protobuf codec of the plugin protocol, grpc-go's own
// but with BufPool: the stock codec takes its buffers from grpc-go's
// default pool, which clears the whole size class (1 MiB for anything
// over 32 KiB) on every call.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

func (Codec) Name() string { return "proto" }

func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("plugin protocol: cannot marshal %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := BufPool.Get(size)
	if _, err := (proto.MarshalOptions{UseCachedSize: true}).MarshalAppend((*buf)[:0], m); err != nil {
		BufPool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, BufPool)}, nil
}

func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("plugin protocol: cannot unmarshal into %T: not a protobuf message", v)
	}
	buf := data.MaterializeToBuffer(BufPool)
	defer buf.Free()
	// proto.Unmarshal copies bytes fields: nothing refers to buf after.
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
