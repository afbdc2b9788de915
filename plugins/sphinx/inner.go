package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"

	"github.com/mixmta/mixmta/sdk"
)

// The inner message is what the entry encrypts into packets and the exit
// reassembles: the SMTP envelope (RFC 5321 §2.3.1) and the message (RFC 5322)
// in one versioned binary record, cut into fragments (fragment.go). It is
// specified byte by byte in SPEC.md §14.1:
//
//	version      1 byte   0x01
//	flags        1 byte   bit 0: SMTPUTF8 (RFC 6531); other bits zero
//	body type    1 byte   0 none, 1 7BIT, 2 8BITMIME, 3 BINARYMIME (RFC 6152, RFC 3030)
//	MAIL FROM    2-byte length + bytes ("" is the null reverse-path)
//	RCPT TO      2-byte count (>= 1), then per recipient 2-byte length + bytes
//	header       4-byte length + bytes
//	body         4-byte length + bytes
//	digest       32 bytes: SHA-256 of every byte before it
//
// All lengths are big-endian and unsigned. The digest catches a
// reassembly that mixed up fragments (wrong order, a fragment of another
// message): the per-hop layers authenticate each packet, not the whole.
const (
	innerVersion = 0x01
	flagSMTPUTF8 = 0x01
	digestSize   = sha256.Size
	// innerFixedSize is the size of an inner message with an empty
	// MAIL FROM, no recipient, empty header and body: the fixed fields.
	innerFixedSize = 1 + 1 + 1 + 2 + 2 + 4 + 4 + digestSize
	// maxEnvelopeBytes bounds the encoded envelope (MAIL FROM and RCPT TO
	// with their length fields): 1 MiB, thousands of recipients of RFC 5321
	// §4.5.3.1.3's 256-octet paths.
	maxEnvelopeBytes = 1 << 20
	// maxAddressBytes is the largest address a 2-byte length can carry.
	maxAddressBytes = math.MaxUint16
	// maxRecipients is the largest count a 2-byte field can carry.
	maxRecipients = math.MaxUint16
)

// bodyTypes maps the BODY= values to their 1-byte codes; index = code.
var bodyTypes = [...]sdk.BodyType{"", sdk.Body7Bit, sdk.Body8BitMIME, sdk.BodyBinaryMIME}

// maxInnerSize is the largest inner message for messages (header + body) of
// at most maxMessage bytes.
func maxInnerSize(maxMessage int64) int64 {
	return maxMessage + maxEnvelopeBytes + innerFixedSize
}

// innerMessage is an encoded inner message kept as segments, so a 32 MiB
// body is never copied into one buffer just to be cut into fragments again.
type innerMessage struct {
	prefix []byte // version .. header length
	header []byte
	mid    [4]byte // body length
	body   []byte
	digest [digestSize]byte
	size   int64
}

// segments returns the encoding's parts in order; their concatenation is
// the inner message.
func (im *innerMessage) segments() [][]byte {
	return [][]byte{im.prefix, im.header, im.mid[:], im.body, im.digest[:]}
}

// reader reads the whole encoding.
func (im *innerMessage) reader() io.Reader {
	segs := im.segments()
	rs := make([]io.Reader, len(segs))
	for i, s := range segs {
		rs[i] = bytes.NewReader(s)
	}
	return io.MultiReader(rs...)
}

// bytes returns the encoding in one slice (tests and small messages).
func (im *innerMessage) bytes() []byte {
	return bytes.Join(im.segments(), nil)
}

// encodeInner encodes an envelope, header and body as an inner message. It
// checks the envelope the way decodeInner does, so whatever an entry sends
// an exit accepts. Errors are permanent *sdk.Error values naming the
// plugin, never an address: 554 5.5.1 without a recipient, 553 5.1.7 or
// 5.1.3 for an address that cannot travel, 552 5.5.3 for an envelope over
// 1 MiB, 552 5.3.4 for a header or body beyond 4 GiB - 1, 554 5.6.0 for an
// unknown BODY type.
func encodeInner(env sdk.Envelope, header, body []byte) (*innerMessage, error) {
	bt, ok := bodyTypeCode(env.BodyType)
	if !ok {
		return nil, sdk.Permanent(554, "6.0", "sphinx: unknown BODY type %q", string(env.BodyType))
	}
	if len(env.RcptTo) == 0 {
		return nil, sdk.Permanent(554, "5.1", "sphinx: message has no RCPT TO")
	}
	if len(env.RcptTo) > maxRecipients {
		return nil, sdk.Permanent(552, "5.3", "sphinx: %d recipients, at most %d travel in one message", len(env.RcptTo), maxRecipients)
	}
	if err := checkAddress(env.MailFrom, true); err != nil {
		return nil, sdk.Permanent(553, "1.7", "sphinx: MAIL FROM cannot travel: %v", err)
	}
	envSize := 2 + len(env.MailFrom) + 2
	for i, r := range env.RcptTo {
		if err := checkAddress(r, false); err != nil {
			return nil, sdk.Permanent(553, "1.3", "sphinx: RCPT TO #%d cannot travel: %v", i+1, err)
		}
		envSize += 2 + len(r)
	}
	if envSize > maxEnvelopeBytes {
		return nil, sdk.Permanent(552, "5.3", "sphinx: envelope of %d bytes exceeds %d", envSize, maxEnvelopeBytes)
	}
	if uint64(len(header)) > math.MaxUint32 || uint64(len(body)) > math.MaxUint32 {
		return nil, sdk.Permanent(552, "3.4", "sphinx: header or body larger than 4 GiB")
	}
	var flags byte
	if env.SMTPUTF8 {
		flags |= flagSMTPUTF8
	}
	p := make([]byte, 0, 3+envSize+4)
	p = append(p, innerVersion, flags, bt)
	p = appendString16(p, env.MailFrom)
	p = binary.BigEndian.AppendUint16(p, uint16(len(env.RcptTo)))
	for _, r := range env.RcptTo {
		p = appendString16(p, r)
	}
	p = binary.BigEndian.AppendUint32(p, uint32(len(header)))
	im := &innerMessage{prefix: p, header: header, body: body}
	binary.BigEndian.PutUint32(im.mid[:], uint32(len(body)))
	h := sha256.New()
	for _, s := range im.segments()[:4] {
		h.Write(s)
		im.size += int64(len(s))
	}
	h.Sum(im.digest[:0])
	im.size += digestSize
	return im, nil
}

func appendString16(p []byte, s string) []byte {
	p = binary.BigEndian.AppendUint16(p, uint16(len(s)))
	return append(p, s...)
}

func bodyTypeCode(t sdk.BodyType) (byte, bool) {
	for i, v := range bodyTypes {
		if v == t {
			return byte(i), true
		}
	}
	return 0, false
}

// checkAddress accepts an address that can be written into an SMTP command
// at the exit: valid UTF-8, no control character (CR and LF above all: no
// command injection at the exit's deliverer), no angle bracket, at most
// 65535 bytes; only MAIL FROM may be empty (the null reverse-path). It
// does not judge RFC 5321 syntax: the core's SMTP server did.
func checkAddress(a string, mayBeEmpty bool) error {
	switch {
	case a == "" && !mayBeEmpty:
		return errors.New("empty address")
	case len(a) > maxAddressBytes:
		return fmt.Errorf("address of %d bytes, at most %d", len(a), maxAddressBytes)
	case !utf8.ValidString(a):
		return errors.New("address is not valid UTF-8")
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x20 || c == 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("address has byte %#02x at offset %d", c, i)
		}
	}
	return nil
}

// errInner is wrapped by every decodeInner error.
var errInner = errors.New("sphinx: malformed inner message")

// decodeInner parses an inner message (SPEC.md §14.1): the digest first,
// then every field, and it rejects an unknown version, flag or body type,
// an address checkAddress refuses, no recipient, and any byte left over.
// Header and Body of the result alias data. It never panics.
func decodeInner(data []byte) (*sdk.Message, error) {
	fail := func(format string, args ...any) (*sdk.Message, error) {
		return nil, fmt.Errorf("%w: %s", errInner, fmt.Sprintf(format, args...))
	}
	if len(data) < innerFixedSize+2 { // + the one recipient's length
		return fail("%d bytes, too short", len(data))
	}
	body, sum := data[:len(data)-digestSize], data[len(data)-digestSize:]
	if d := sha256.Sum256(body); !bytes.Equal(d[:], sum) {
		return fail("digest mismatch (fragments reassembled wrongly or corrupted)")
	}
	r := reader{b: body}
	if v := r.u8(); v != innerVersion {
		return fail("unknown version %#02x", v)
	}
	flags := r.u8()
	if flags&^flagSMTPUTF8 != 0 {
		return fail("unknown flags %#02x", flags)
	}
	bt := r.u8()
	if int(bt) >= len(bodyTypes) {
		return fail("unknown body type %d", bt)
	}
	env := sdk.Envelope{SMTPUTF8: flags&flagSMTPUTF8 != 0, BodyType: bodyTypes[bt]}
	env.MailFrom = string(r.bytes(int(r.u16())))
	if r.err == nil {
		if err := checkAddress(env.MailFrom, true); err != nil {
			return fail("MAIL FROM: %v", err)
		}
	}
	n := int(r.u16())
	if r.err == nil && n == 0 {
		return fail("no RCPT TO")
	}
	for i := 0; i < n && r.err == nil; i++ {
		a := string(r.bytes(int(r.u16())))
		if r.err != nil {
			break
		}
		if err := checkAddress(a, false); err != nil {
			return fail("RCPT TO #%d: %v", i+1, err)
		}
		env.RcptTo = append(env.RcptTo, a)
	}
	header := r.bytes(int(r.u32()))
	msgBody := r.bytes(int(r.u32()))
	if r.err != nil {
		return fail("%v", r.err)
	}
	if len(r.b) != 0 {
		return fail("%d bytes after the body", len(r.b))
	}
	return &sdk.Message{Envelope: env, Header: header, Body: msgBody, Size: int64(len(header) + len(msgBody))}, nil
}

// innerLength reads the length fields at the start of an inner message
// (SPEC.md §14.1) and returns its size, digest included, without checking
// anything else; decodeInner does. It fails when the fields run past data.
func innerLength(data []byte) (int64, error) {
	r := reader{b: data}
	r.bytes(3) // version, flags, body type
	r.bytes(int(r.u16()))
	for n := int(r.u16()); n > 0 && r.err == nil; n-- {
		r.bytes(int(r.u16()))
	}
	r.bytes(int(r.u32()))
	r.bytes(int(r.u32()))
	r.bytes(digestSize)
	if r.err != nil {
		return 0, fmt.Errorf("%w: %v", errInner, r.err)
	}
	return int64(len(data) - len(r.b)), nil
}

// reader consumes big-endian fields from b; the first short read sets err
// and makes every later read return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("field of %d bytes with %d left", n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}
