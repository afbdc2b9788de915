// Package wire is what both ends of the plugin protocol share: the
// go-plugin handshake and protocol version, how a message is split into
// frames and put back together, the gRPC limits, flow-control windows and
// buffer pool both sides set, the operations of the batched Calls stream
// and the layout of the body region. The host's end is
// internal/pluginclient, the plugin's end is sdk.Serve; the messages are
// internal/pb, generated from internal/pb/stage.proto.
package wire

import (
	"fmt"
	"io"

	"github.com/mixmta/mixmta/internal/pb"
)

// ProtocolVersion is the version of the core-plugin protocol this SDK
// speaks, negotiated in go-plugin's handshake (VersionedPlugins).
const ProtocolVersion = 1

// FrameSize is the most message bytes one gRPC frame carries (1 MiB); larger
// messages are split, so grpc-go's 4 MiB default limit never bites.
const FrameSize = 1 << 20

// MaxCallBytes is the gRPC receive limit both sides set explicitly (64 MiB):
// far above one frame, far below "unlimited".
const MaxCallBytes = 64 << 20

// FlowWindow is the HTTP/2 flow-control window of every stream and of the
// connection (8 MiB), set on both sides. gRPC's default (64 KiB, grown by
// its bandwidth estimator) makes the batched Calls stream, which carries
// every call of a stage, wait for a WINDOW_UPDATE round trip after each
// 64 KiB message. A window bounds only what is in flight, not memory kept.
const FlowWindow = 8 << 20

// SocketBuffer is gRPC's read and write buffer on the Unix socket (256
// KiB instead of 32 KiB): a 64 KiB message in a few syscalls, not many.
const SocketBuffer = 256 << 10

// Frames splits meta, header and body into MessageFrames of at most
// FrameSize content bytes each; the first frame carries meta. A frame holds
// at most one piece of the header and one of the body, header first.
func Frames(meta *pb.MessageMeta, header, body []byte) []*pb.MessageFrame {
	out := []*pb.MessageFrame{{Meta: meta}}
	cur, room := out[0], FrameSize
	for i, b := range [2][]byte{header, body} {
		for len(b) > 0 {
			if room == 0 {
				cur, room = &pb.MessageFrame{}, FrameSize
				out = append(out, cur)
			}
			n := min(len(b), room)
			if i == 0 {
				cur.Header = b[:n]
			} else {
				cur.Body = b[:n]
			}
			b, room = b[n:], room-n
		}
	}
	return out
}

// FrameSender is a gRPC stream that sends MessageFrames.
type FrameSender interface{ Send(*pb.MessageFrame) error }

// FrameReceiver is a gRPC stream that receives MessageFrames.
type FrameReceiver interface {
	Recv() (*pb.MessageFrame, error)
}

// SendMessage writes a message to s as frames.
func SendMessage(s FrameSender, meta *pb.MessageMeta, header, body []byte) error {
	for _, f := range Frames(meta, header, body) {
		if err := s.Send(f); err != nil {
			return err
		}
	}
	return nil
}

// StreamFrame is the body bytes per frame when a body is streamed (256
// KiB): a call holds one frame of it, whatever the message size.
const StreamFrame = 256 << 10

// BodyReadError is a failure to read the body being streamed (the core's
// queue), as opposed to a failure of the stream itself.
type BodyReadError struct{ Err error }

func (e *BodyReadError) Error() string { return "reading the body to send: " + e.Err.Error() }
func (e *BodyReadError) Unwrap() error { return e.Err }

// SendStreamed writes meta and header as frames, then n body bytes read
// from r in frames of StreamFrame bytes. A short body is a *BodyReadError.
func SendStreamed(s FrameSender, meta *pb.MessageMeta, header []byte, r io.Reader, n int64) error {
	for _, f := range Frames(meta, header, nil) {
		if err := s.Send(f); err != nil {
			return err
		}
	}
	buf := make([]byte, min(n, StreamFrame))
	for n > 0 {
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), n)])
		if err != nil {
			return &BodyReadError{err}
		}
		if err := s.Send(&pb.MessageFrame{Body: buf[:k]}); err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}

// RecvStreamed reads one framed message's meta and header and returns a
// reader for its body, which pulls the remaining frames as it is read.
func RecvStreamed(r FrameReceiver, maxBytes int64) (*pb.MessageMeta, []byte, *FrameBody, error) {
	f, err := r.Recv()
	if err != nil {
		return nil, nil, nil, err
	}
	meta := f.GetMeta()
	if meta == nil {
		return nil, nil, nil, fmt.Errorf("plugin protocol: first frame has no meta")
	}
	hl, bl := meta.GetHeaderLen(), meta.GetBodyLen()
	if hl < 0 || bl < 0 || hl+bl > maxBytes {
		return nil, nil, nil, fmt.Errorf("plugin protocol: message of %d bytes exceeds limit %d", hl+bl, maxBytes)
	}
	var header []byte
	if meta.GetHeaderPresent() {
		header = make([]byte, 0, hl)
	}
	for {
		header = append(header, f.GetHeader()...)
		if int64(len(header)) > hl {
			return nil, nil, nil, fmt.Errorf("plugin protocol: frames exceed announced lengths")
		}
		if int64(len(header)) == hl {
			break
		}
		if len(f.GetBody()) > 0 {
			return nil, nil, nil, fmt.Errorf("plugin protocol: body before the end of the header")
		}
		if f, err = r.Recv(); err != nil {
			return nil, nil, nil, fmt.Errorf("plugin protocol: message truncated: %w", err)
		}
	}
	return meta, header, &FrameBody{r: r, cur: f.GetBody(), left: bl - int64(len(f.GetBody()))}, nil
}

// FrameBody reads a body from the frames that follow the header.
type FrameBody struct {
	r    FrameReceiver
	cur  []byte
	left int64 // bytes not yet received
	err  error
}

func (b *FrameBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("plugin protocol: frames exceed announced lengths")
	}
	for len(b.cur) == 0 {
		if b.left == 0 {
			return 0, io.EOF
		}
		if b.err != nil {
			return 0, b.err
		}
		f, err := b.r.Recv()
		if err != nil {
			b.err = fmt.Errorf("plugin protocol: message truncated: %w", err)
			return 0, b.err
		}
		b.cur = f.GetBody()
		b.left -= int64(len(b.cur))
		if b.left < 0 {
			return 0, fmt.Errorf("plugin protocol: frames exceed announced lengths")
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// RecvMessage reads one framed message: meta, then header and body bytes
// up to the lengths meta announces. Lengths are bounded by maxBytes.
func RecvMessage(r FrameReceiver, maxBytes int64) (*pb.MessageMeta, []byte, []byte, error) {
	f, err := r.Recv()
	if err != nil {
		return nil, nil, nil, err
	}
	meta := f.GetMeta()
	if meta == nil {
		return nil, nil, nil, fmt.Errorf("plugin protocol: first frame has no meta")
	}
	hl, bl := meta.GetHeaderLen(), meta.GetBodyLen()
	if hl < 0 || bl < 0 || hl+bl > maxBytes {
		return nil, nil, nil, fmt.Errorf("plugin protocol: message of %d bytes exceeds limit %d", hl+bl, maxBytes)
	}
	var header, body []byte
	if meta.GetHeaderPresent() {
		header = make([]byte, 0, hl)
	}
	if meta.GetBodyPresent() {
		body = make([]byte, 0, bl)
	}
	for {
		header = append(header, f.GetHeader()...)
		body = append(body, f.GetBody()...)
		if int64(len(header)) > hl || int64(len(body)) > bl {
			return nil, nil, nil, fmt.Errorf("plugin protocol: frames exceed announced lengths")
		}
		if int64(len(header)) == hl && int64(len(body)) == bl {
			return meta, header, body, nil
		}
		if f, err = r.Recv(); err != nil {
			return nil, nil, nil, fmt.Errorf("plugin protocol: message truncated: %w", err)
		}
	}
}
