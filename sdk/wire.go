package sdk

import (
	"fmt"
	"io"
	"time"

	"github.com/mixmta/mixmta/sdk/internal/pb"
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

// flowWindow is the HTTP/2 flow-control window of every stream and of the
// connection (8 MiB), set on both sides. gRPC's default (64 KiB, grown by
// its bandwidth estimator) makes the batched Calls stream, which carries
// every call of a stage, wait for a WINDOW_UPDATE round trip after each
// 64 KiB message. A window bounds only what is in flight, not memory kept.
const flowWindow = 8 << 20

// socketBuffer is gRPC's read and write buffer on the Unix socket (256
// KiB instead of 32 KiB): a 64 KiB message in a few syscalls, not many.
const socketBuffer = 256 << 10

// frames splits meta, header and body into MessageFrames of at most
// FrameSize content bytes each; the first frame carries meta. A frame holds
// at most one piece of the header and one of the body, header first.
func frames(meta *pb.MessageMeta, header, body []byte) []*pb.MessageFrame {
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

// frameSender is a gRPC stream that sends MessageFrames.
type frameSender interface{ Send(*pb.MessageFrame) error }

// frameReceiver is a gRPC stream that receives MessageFrames.
type frameReceiver interface {
	Recv() (*pb.MessageFrame, error)
}

// sendMessage writes a message to s as frames.
func sendMessage(s frameSender, meta *pb.MessageMeta, header, body []byte) error {
	for _, f := range frames(meta, header, body) {
		if err := s.Send(f); err != nil {
			return err
		}
	}
	return nil
}

// streamFrame is the body bytes per frame when a body is streamed (256
// KiB): a call holds one frame of it, whatever the message size.
const streamFrame = 256 << 10

// bodyReadError is a failure to read the body being streamed (the core's
// queue), as opposed to a failure of the stream itself.
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string { return "sdk: reading the body to send: " + e.err.Error() }
func (e *bodyReadError) Unwrap() error { return e.err }

// sendStreamed writes meta and header as frames, then n body bytes read
// from r in frames of streamFrame bytes. A short body is a *bodyReadError.
func sendStreamed(s frameSender, meta *pb.MessageMeta, header []byte, r io.Reader, n int64) error {
	for _, f := range frames(meta, header, nil) {
		if err := s.Send(f); err != nil {
			return err
		}
	}
	buf := make([]byte, min(n, streamFrame))
	for n > 0 {
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), n)])
		if err != nil {
			return &bodyReadError{err}
		}
		if err := s.Send(&pb.MessageFrame{Body: buf[:k]}); err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}

// recvStreamed reads one framed message's meta and header and returns a
// reader for its body, which pulls the remaining frames as it is read.
func recvStreamed(r frameReceiver, maxBytes int64) (*pb.MessageMeta, []byte, *frameBody, error) {
	f, err := r.Recv()
	if err != nil {
		return nil, nil, nil, err
	}
	meta := f.GetMeta()
	if meta == nil {
		return nil, nil, nil, fmt.Errorf("sdk: first frame has no meta")
	}
	hl, bl := meta.GetHeaderLen(), meta.GetBodyLen()
	if hl < 0 || bl < 0 || hl+bl > maxBytes {
		return nil, nil, nil, fmt.Errorf("sdk: message of %d bytes exceeds limit %d", hl+bl, maxBytes)
	}
	var header []byte
	if meta.GetHeaderPresent() {
		header = make([]byte, 0, hl)
	}
	for {
		header = append(header, f.GetHeader()...)
		if int64(len(header)) > hl {
			return nil, nil, nil, fmt.Errorf("sdk: frames exceed announced lengths")
		}
		if int64(len(header)) == hl {
			break
		}
		if len(f.GetBody()) > 0 {
			return nil, nil, nil, fmt.Errorf("sdk: body before the end of the header")
		}
		if f, err = r.Recv(); err != nil {
			return nil, nil, nil, fmt.Errorf("sdk: message truncated: %w", err)
		}
	}
	return meta, header, &frameBody{r: r, cur: f.GetBody(), left: bl - int64(len(f.GetBody()))}, nil
}

// frameBody reads a body from the frames that follow the header.
type frameBody struct {
	r    frameReceiver
	cur  []byte
	left int64 // bytes not yet received
	err  error
}

func (b *frameBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("sdk: frames exceed announced lengths")
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
			b.err = fmt.Errorf("sdk: message truncated: %w", err)
			return 0, b.err
		}
		b.cur = f.GetBody()
		b.left -= int64(len(b.cur))
		if b.left < 0 {
			return 0, fmt.Errorf("sdk: frames exceed announced lengths")
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// recvMessage reads one framed message: meta, then header and body bytes
// up to the lengths meta announces. Lengths are bounded by maxBytes.
func recvMessage(r frameReceiver, maxBytes int64) (*pb.MessageMeta, []byte, []byte, error) {
	f, err := r.Recv()
	if err != nil {
		return nil, nil, nil, err
	}
	meta := f.GetMeta()
	if meta == nil {
		return nil, nil, nil, fmt.Errorf("sdk: first frame has no meta")
	}
	hl, bl := meta.GetHeaderLen(), meta.GetBodyLen()
	if hl < 0 || bl < 0 || hl+bl > maxBytes {
		return nil, nil, nil, fmt.Errorf("sdk: message of %d bytes exceeds limit %d", hl+bl, maxBytes)
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
			return nil, nil, nil, fmt.Errorf("sdk: frames exceed announced lengths")
		}
		if int64(len(header)) == hl && int64(len(body)) == bl {
			return meta, header, body, nil
		}
		if f, err = r.Recv(); err != nil {
			return nil, nil, nil, fmt.Errorf("sdk: message truncated: %w", err)
		}
	}
}

func envelopeToPB(e Envelope) *pb.Envelope {
	return &pb.Envelope{MailFrom: e.MailFrom, RcptTo: e.RcptTo, Smtputf8: e.SMTPUTF8, BodyType: string(e.BodyType)}
}

func envelopeFromPB(e *pb.Envelope) Envelope {
	return Envelope{MailFrom: e.GetMailFrom(), RcptTo: e.GetRcptTo(), SMTPUTF8: e.GetSmtputf8(), BodyType: BodyType(e.GetBodyType())}
}

func metaToPB(m *Message, sendHeader, sendBody bool) *pb.MessageMeta {
	meta := &pb.MessageMeta{
		Id: m.ID, Envelope: envelopeToPB(m.Envelope), Attempt: int32(m.Attempt), Size: m.Size,
	}
	if !m.ReceivedAt.IsZero() {
		meta.ReceivedUnixNano = m.ReceivedAt.UnixNano()
	}
	if sendHeader && m.Header != nil {
		meta.HeaderPresent, meta.HeaderLen = true, int64(len(m.Header))
	}
	switch {
	case sendBody && m.Body != nil:
		meta.BodyPresent, meta.BodyLen = true, int64(len(m.Body))
	case sendBody && m.OpenBody != nil:
		meta.BodyPresent, meta.BodyLen = true, m.BodyLen
	}
	return meta
}

func messageFromPB(meta *pb.MessageMeta, header, body []byte) *Message {
	m := &Message{
		ID: meta.GetId(), Envelope: envelopeFromPB(meta.GetEnvelope()), Size: meta.GetSize(),
		Attempt: int(meta.GetAttempt()), Header: header, Body: body,
	}
	if body != nil {
		m.BodyLen = int64(len(body))
	}
	if n := meta.GetReceivedUnixNano(); n != 0 {
		m.ReceivedAt = time.Unix(0, n)
	}
	return m
}

func statusToPB(err error) *pb.Status {
	e := AsError(err)
	if e == nil {
		return &pb.Status{}
	}
	kind := int32(2)
	if e.Temporary {
		kind = 1
	}
	return &pb.Status{Kind: kind, SmtpCode: int32(e.SMTPCode()), EnhancedCode: e.EnhancedCode(), Text: e.Message}
}

func statusFromPB(s *pb.Status) error {
	if s == nil || s.GetKind() == 0 {
		return nil
	}
	return &Error{Temporary: s.GetKind() == 1, Code: int(s.GetSmtpCode()), Enhanced: s.GetEnhancedCode(), Message: s.GetText()}
}
