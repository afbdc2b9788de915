// Package mixkey holds a mix node's X25519 epoch private keys (RFC 7748)
// so that they can die completely: the 32-byte scalar lives in one buffer
// of this package that Wipe zeroes, and nothing here leaves a copy of it
// anywhere else in memory (no crypto/ecdh.PrivateKey, which keeps a copy it
// never zeroes; no encoding/pem, whose decoder leaves the base64 text in a
// buffer of its own). The core writes a key file with Encode at creation
// and keeps only the public key; the mixer (the one process that holds the
// private key while it is valid) reads it with ReadFile and wipes it when
// the key retires.
//
// The key file is a PEM "PRIVATE KEY" block (RFC 7468) holding PKCS#8 DER
// (RFC 5208, RFC 8410 §7: the 16-byte prefix 302e020100300506032b656e0422
// 0420 and the 32-byte scalar), with the PEM headers Epoch (decimal),
// Not-After, Not-Before (RFC 3339, UTC, whole seconds) and Public-Key
// (standard base64 of the 32-byte public key), in that order: what
// encoding/pem.Decode and x509.ParsePKCS8PrivateKey read too. Files written
// before Public-Key existed are read as well (the public key is then
// computed).
package mixkey

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"filippo.io/edwards25519/field"
)

// Size is the size of a scalar, a public key and a shared secret (bytes).
const Size = 32

// Key is one X25519 private key and its public key. Hold it by pointer and
// never copy the struct: Wipe must reach the only copy of the scalar.
type Key struct {
	scalar [Size]byte
	public [Size]byte
}

// basePoint is u = 9 (RFC 7748 §4.1).
var basePoint = [Size]byte{9}

// Generate draws a new key from r (crypto/rand.Reader in production),
// reading the scalar straight into the key's buffer. Errors: r fails.
func Generate(r io.Reader) (*Key, error) {
	k := new(Key)
	if _, err := io.ReadFull(r, k.scalar[:]); err != nil {
		k.Wipe()
		return nil, fmt.Errorf("mixkey: reading randomness: %w", err)
	}
	X25519(&k.public, &k.scalar, &basePoint)
	return k, nil
}

// New returns a Key holding a copy of the 32-byte scalar b; the caller
// zeroes its own copy. Errors: b is not 32 bytes.
func New(b []byte) (*Key, error) {
	if len(b) != Size {
		return nil, fmt.Errorf("mixkey: private key of %d bytes, want %d", len(b), Size)
	}
	k := new(Key)
	copy(k.scalar[:], b)
	X25519(&k.public, &k.scalar, &basePoint)
	return k, nil
}

// Scalar is the key's own 32-byte buffer (not a copy): for X25519 only,
// never to be copied or kept. It is all zero after Wipe.
func (k *Key) Scalar() *[Size]byte { return &k.scalar }

// Public returns a copy of the 32-byte public key.
func (k *Key) Public() []byte { return bytes.Clone(k.public[:]) }

// Wipe zeroes the scalar (and the public key): the key is unusable after.
// Safe to call more than once and on nil.
func (k *Key) Wipe() {
	if k == nil {
		return
	}
	clear(k.scalar[:])
	clear(k.public[:])
}

// ECDH sets dst to the X25519 shared secret of k and the peer's public key
// u (RFC 7748 §6.1) and reports false for an all-zero result (u of low
// order: refuse it). Constant time in the scalar and in u.
func (k *Key) ECDH(dst, u *[Size]byte) bool {
	X25519(dst, &k.scalar, u)
	var acc byte
	for _, c := range dst {
		acc |= c
	}
	return acc != 0
}

// X25519 is the function of RFC 7748 §5: dst = u(clamp(scalar)·P) where P
// has u-coordinate u. The clamped copy of the scalar on the stack is
// zeroed before returning. Constant time.
func X25519(dst, scalar, u *[Size]byte) {
	e := *scalar
	e[0] &= 248
	e[31] &= 127
	e[31] |= 64
	Ladder(dst, &e, u)
	clear(e[:])
}

// Ladder is the Montgomery ladder of RFC 7748 §5 (as in Go's crypto/ecdh,
// with the field arithmetic of filippo.io/edwards25519/field) over bits
// 254..0 of the little-endian scalar e, taken as is (not clamped, bit 255
// ignored): dst = u(e·P). u is decoded as in RFC 7748 (bit 255 ignored,
// non-canonical values reduced). Constant time in e and u. Sphinx senders
// use it with unclamped products of scalars.
func Ladder(dst, e, u *[Size]byte) {
	var x1, x2, z2, x3, z3, tmp0, tmp1 field.Element
	if _, err := x1.SetBytes(u[:]); err != nil {
		panic("mixkey: internal error: field decoding of 32 bytes failed")
	}
	x2.One()
	x3.Set(&x1)
	z3.One()

	swap := 0
	for pos := 254; pos >= 0; pos-- {
		b := int(e[pos/8]>>uint(pos&7)) & 1
		swap ^= b
		x2.Swap(&x3, swap)
		z2.Swap(&z3, swap)
		swap = b

		tmp0.Subtract(&x3, &z3)
		tmp1.Subtract(&x2, &z2)
		x2.Add(&x2, &z2)
		z2.Add(&x3, &z3)
		z3.Multiply(&tmp0, &x2)
		z2.Multiply(&z2, &tmp1)
		tmp0.Square(&tmp1)
		tmp1.Square(&x2)
		x3.Add(&z3, &z2)
		z2.Subtract(&z3, &z2)
		x2.Multiply(&tmp1, &tmp0)
		tmp1.Subtract(&tmp1, &tmp0)
		z2.Square(&z2)

		z3.Mult32(&tmp1, 121666)
		x3.Square(&x3)
		tmp0.Add(&tmp0, &z3)
		z3.Multiply(&x1, &z2)
		z2.Multiply(&tmp1, &tmp0)
	}
	x2.Swap(&x3, swap)
	z2.Swap(&z3, swap)

	z2.Invert(&z2) // 0 for the point at infinity, giving u = 0
	x2.Multiply(&x2, &z2)
	copy(dst[:], x2.Bytes())
}

// Meta is what a key file says besides the scalar.
type Meta struct {
	Epoch     uint64
	NotBefore time.Time
	NotAfter  time.Time
	// Public is the 32-byte public key.
	Public []byte
}

const (
	pemBegin = "-----BEGIN PRIVATE KEY-----\n"
	pemEnd   = "-----END PRIVATE KEY-----\n"
	// derPrefix is PKCS#8 for an X25519 key up to the scalar (RFC 8410 §7).
	derPrefix = "\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x6e\x04\x22\x04\x20"
	derSize   = len(derPrefix) + Size // 48 bytes: 64 base64 characters, one line
	b64Size   = 64
)

// Encode returns the key file of k with meta's epoch and validity (meta's
// Public is ignored: k's own is written). The result holds the scalar in
// base64: the caller writes it and zeroes it (clear). Errors: none; a
// NotBefore or NotAfter with a fraction of a second is truncated.
func Encode(k *Key, meta Meta) []byte {
	var der [derSize]byte
	copy(der[:], derPrefix)
	copy(der[len(derPrefix):], k.scalar[:])
	head := pemBegin +
		"Epoch: " + strconv.FormatUint(meta.Epoch, 10) + "\n" +
		"Not-After: " + meta.NotAfter.UTC().Truncate(time.Second).Format(time.RFC3339) + "\n" +
		"Not-Before: " + meta.NotBefore.UTC().Truncate(time.Second).Format(time.RFC3339) + "\n" +
		"Public-Key: " + base64.StdEncoding.EncodeToString(k.public[:]) + "\n\n"
	out := make([]byte, 0, len(head)+b64Size+1+len(pemEnd))
	out = append(out, head...)
	out = out[:len(out)+b64Size]
	base64.StdEncoding.Encode(out[len(head):], der[:])
	clear(der[:])
	out = append(out, '\n')
	return append(out, pemEnd...)
}

// ErrFormat is the class of a key file that does not parse.
var ErrFormat = errors.New("mixkey: malformed key file")

// ErrInsecurePermissions: a key file is readable or writable by group or
// others, or is not a regular file (a symbolic link).
var ErrInsecurePermissions = errors.New("insecure permissions")

// parsed is a key file split into its parts; body aliases the input.
type parsed struct {
	meta Meta
	body []byte // the base64 lines, newlines included
}

// parse splits a key file without decoding its body. Errors: ErrFormat.
func parse(data []byte) (*parsed, error) {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrFormat, what) }
	rest, ok := bytes.CutPrefix(data, []byte(pemBegin))
	if !ok {
		return nil, bad(`not a PEM "PRIVATE KEY" block`)
	}
	p := &parsed{}
	headers := map[string]string{}
	for {
		line, after, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return nil, bad("headers not terminated")
		}
		rest = after
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(": "))
		if !ok {
			return nil, bad("a header line without a colon")
		}
		headers[string(name)] = string(value)
	}
	end := bytes.Index(rest, []byte(pemEnd[:len(pemEnd)-1]))
	if end < 0 || len(bytes.TrimSpace(rest[end+len(pemEnd)-1:])) != 0 {
		return nil, bad("no END line, or data after it")
	}
	p.body = rest[:end]
	e, err := strconv.ParseUint(headers["Epoch"], 10, 64)
	if err != nil {
		return nil, bad(fmt.Sprintf("Epoch header %q", headers["Epoch"]))
	}
	p.meta.Epoch = e
	nb, err1 := time.Parse(time.RFC3339, headers["Not-Before"])
	na, err2 := time.Parse(time.RFC3339, headers["Not-After"])
	if err1 != nil || err2 != nil || !nb.Before(na) {
		return nil, bad("bad Not-Before or Not-After header")
	}
	p.meta.NotBefore, p.meta.NotAfter = nb.UTC(), na.UTC()
	if pub, ok := headers["Public-Key"]; ok {
		b, err := base64.StdEncoding.DecodeString(pub)
		if err != nil || len(b) != Size {
			return nil, bad("Public-Key header is not 32 bytes of base64")
		}
		p.meta.Public = b
	}
	return p, nil
}

// DecodePublic reads a key file's Epoch, validity and public key. With a
// Public-Key header the private part is not decoded at all; without one
// (a file from before that header) the key is decoded, its public key
// computed and the key wiped. Errors: ErrFormat.
func DecodePublic(data []byte) (Meta, error) {
	p, err := parse(data)
	if err != nil {
		return Meta{}, err
	}
	if p.meta.Public != nil {
		return p.meta, nil
	}
	k, meta, err := Decode(data)
	if err != nil {
		return Meta{}, err
	}
	k.Wipe()
	return meta, nil
}

// Decode reads a key file into a new Key; the base64 and DER forms of the
// scalar are decoded in buffers of Decode's own, zeroed before it returns
// (data itself is left to the caller to zero). A Public-Key header that
// does not match the scalar is an error. Errors: ErrFormat.
func Decode(data []byte) (*Key, Meta, error) {
	p, err := parse(data)
	if err != nil {
		return nil, Meta{}, err
	}
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrFormat, what) }
	var b64 [2 * b64Size]byte
	var der [derSize + 3]byte
	defer clear(b64[:])
	defer clear(der[:])
	n := 0
	for _, c := range p.body {
		if c == '\n' || c == '\r' || c == ' ' || c == '\t' {
			continue
		}
		if n == len(b64) {
			return nil, Meta{}, bad("key body too long")
		}
		b64[n] = c
		n++
	}
	if n != b64Size {
		return nil, Meta{}, bad("key body is not one X25519 PKCS#8 key")
	}
	m, err := base64.StdEncoding.Decode(der[:], b64[:n])
	if err != nil || m != derSize || string(der[:len(derPrefix)]) != derPrefix {
		return nil, Meta{}, bad("key body is not one X25519 PKCS#8 key")
	}
	k := new(Key)
	copy(k.scalar[:], der[len(derPrefix):derSize])
	X25519(&k.public, &k.scalar, &basePoint)
	if p.meta.Public != nil && subtle.ConstantTimeCompare(p.meta.Public, k.public[:]) != 1 {
		k.Wipe()
		return nil, Meta{}, bad("Public-Key header does not match the private key")
	}
	p.meta.Public = k.Public()
	return k, p.meta, nil
}

// maxFile bounds a key file's size (bytes).
const maxFile = 4096

// ReadFile reads and decodes the key file at path, refusing a file open to
// group or others or that is not a regular file (ErrInsecurePermissions);
// the bytes read are zeroed before it returns. Errors: ErrInsecurePermissions,
// ErrFormat, and the file system's (fs.ErrNotExist for a missing file).
func ReadFile(path string) (*Key, Meta, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, Meta{}, fmt.Errorf("mixkey: key file %s is a symbolic link: %w", path, ErrInsecurePermissions)
		}
		return nil, Meta{}, fmt.Errorf("mixkey: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, Meta{}, fmt.Errorf("mixkey: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, Meta{}, fmt.Errorf("mixkey: key file %s is not a regular file: %w", path, ErrInsecurePermissions)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, Meta{}, fmt.Errorf("mixkey: key file %s has mode %04o, readable or writable by group or others (run: chmod 600 %s): %w",
			path, m, path, ErrInsecurePermissions)
	}
	// One buffer of our own, read into in place: no growing copies left
	// behind unzeroed.
	var buf [maxFile]byte
	defer clear(buf[:])
	n, err := io.ReadFull(f, buf[:])
	if err == nil {
		return nil, Meta{}, fmt.Errorf("mixkey: key file %s: %w: larger than %d bytes", path, ErrFormat, maxFile)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, Meta{}, fmt.Errorf("mixkey: %w", err)
	}
	k, meta, err := Decode(buf[:n])
	if err != nil {
		return nil, Meta{}, fmt.Errorf("mixkey: key file %s: %w", path, err)
	}
	return k, meta, nil
}
