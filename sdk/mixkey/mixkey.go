// Package mixkey holds a mix node's epoch private keys, X25519 (RFC 7748)
// or X-Wing (draft-connolly-cfrg-xwing-kem: X25519 + ML-KEM-768), so that
// they can die completely: the 32-byte scalar lives in one buffer
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
//
// An X-Wing key (Kind XWing, the Sphinx KEM format) is its 32-byte seed,
// the private key of draft-connolly-cfrg-xwing-kem §5 that SHAKE256
// expands into the ML-KEM-768 and X25519 private keys. Its file is the
// same PEM block with PKCS#8 DER 3034020100300d060b2b0601040183e62d81c87a
// 0420 and the seed (the draft's OID 1.3.6.1.4.1.62253.25722, the seed as
// the privateKey octet string) and a Public-Key header of the 1216-byte
// X-Wing public key. The seed lives in the Key's buffer that Wipe zeroes;
// the expanded private key the KEM computes from it (crypto/hpke) is Go's
// own memory, which Go offers no way to zero: a mixer drops it with the
// seed and the garbage collector reclaims it.
package mixkey

import (
	"bytes"
	"crypto/hpke"
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

// Kind is the algorithm of a mix key: the Sphinx packet format it serves.
type Kind uint8

const (
	// X25519Kind: a 32-byte scalar and a 32-byte public key (the X25519
	// Sphinx format).
	X25519Kind Kind = iota
	// XWing: a 32-byte seed and a 1216-byte public key (ML-KEM-768
	// encapsulation key then X25519 public key; the KEM Sphinx format).
	XWing
)

// XWingPublicSize is the size of an X-Wing public key (bytes).
const XWingPublicSize = 1216

// String is "x25519" or "xwing", the names of the Sphinx formats.
func (k Kind) String() string {
	if k == XWing {
		return "xwing"
	}
	return "x25519"
}

// Key is one X25519 private key and its public key, or one X-Wing seed and
// its public key. Hold it by pointer and never copy the struct: Wipe must
// reach the only copy of the scalar or seed.
type Key struct {
	kind   Kind
	scalar [Size]byte // the X25519 scalar, or the X-Wing seed
	public [Size]byte
	// kemPublic is the 1216-byte X-Wing public key (XWing only).
	kemPublic []byte
}

// GenerateXWing draws a new X-Wing seed from r (crypto/rand.Reader in
// production) into the key's buffer and computes its public key. Errors:
// r fails.
func GenerateXWing(r io.Reader) (*Key, error) {
	k := &Key{kind: XWing}
	if _, err := io.ReadFull(r, k.scalar[:]); err != nil {
		k.Wipe()
		return nil, fmt.Errorf("mixkey: reading randomness: %w", err)
	}
	if err := k.xwingPublic(); err != nil {
		k.Wipe()
		return nil, err
	}
	return k, nil
}

// NewXWing returns an X-Wing Key holding a copy of the 32-byte seed b; the
// caller zeroes its own copy. Errors: b is not 32 bytes.
func NewXWing(b []byte) (*Key, error) {
	if len(b) != Size {
		return nil, fmt.Errorf("mixkey: X-Wing seed of %d bytes, want %d", len(b), Size)
	}
	k := &Key{kind: XWing}
	copy(k.scalar[:], b)
	if err := k.xwingPublic(); err != nil {
		k.Wipe()
		return nil, err
	}
	return k, nil
}

func (k *Key) xwingPublic() error {
	priv, err := hpke.MLKEM768X25519().NewPrivateKey(k.scalar[:])
	if err != nil {
		return fmt.Errorf("mixkey: X-Wing key: %w", err)
	}
	k.kemPublic = priv.PublicKey().Bytes()
	return nil
}

// Kind is the key's algorithm.
func (k *Key) Kind() Kind { return k.kind }

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

// Scalar is the key's own 32-byte buffer (not a copy): the X25519 scalar,
// or the X-Wing seed, for the key's algorithm only, never to be copied or
// kept. It is all zero after Wipe.
func (k *Key) Scalar() *[Size]byte { return &k.scalar }

// Public returns a copy of the public key: 32 bytes (X25519) or
// XWingPublicSize bytes (XWing).
func (k *Key) Public() []byte {
	if k.kind == XWing {
		return bytes.Clone(k.kemPublic)
	}
	return bytes.Clone(k.public[:])
}

// Wipe zeroes the scalar (and the public key): the key is unusable after.
// Safe to call more than once and on nil.
func (k *Key) Wipe() {
	if k == nil {
		return
	}
	clear(k.scalar[:])
	clear(k.public[:])
	clear(k.kemPublic)
}

// ECDH sets dst to the X25519 shared secret of k and the peer's public key
// u (RFC 7748 §6.1) and reports false for an all-zero result (u of low
// order: refuse it), and for an X-Wing key. Constant time in the scalar
// and in u.
func (k *Key) ECDH(dst, u *[Size]byte) bool {
	if k.kind != X25519Kind {
		clear(dst[:])
		return false
	}
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
	// Public is the public key: 32 bytes (X25519) or XWingPublicSize
	// bytes (XWing).
	Public []byte
	// Kind is the key's algorithm, told by the file's DER prefix.
	Kind Kind
}

const (
	pemBegin = "-----BEGIN PRIVATE KEY-----\n"
	pemEnd   = "-----END PRIVATE KEY-----\n"
	// derPrefix is PKCS#8 for an X25519 key up to the scalar (RFC 8410 §7).
	derPrefix = "\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x6e\x04\x22\x04\x20"
	derSize   = len(derPrefix) + Size // 48 bytes: 64 base64 characters, one line
	b64Size   = 64
	// xwingDERPrefix is PKCS#8 for an X-Wing seed (package comment).
	xwingDERPrefix = "\x30\x34\x02\x01\x00\x30\x0d\x06\x0b\x2b\x06\x01\x04\x01\x83\xe6\x2d\x81\xc8\x7a\x04\x20"
	xwingDERSize   = len(xwingDERPrefix) + Size // 54 bytes: 72 base64 characters
	xwingB64Size   = 72
)

// Encode returns the key file of k with meta's epoch and validity (meta's
// Public is ignored: k's own is written). The result holds the scalar in
// base64: the caller writes it and zeroes it (clear). Errors: none; a
// NotBefore or NotAfter with a fraction of a second is truncated.
func Encode(k *Key, meta Meta) []byte {
	var der [xwingDERSize]byte
	prefix, size, b64 := derPrefix, derSize, b64Size
	if k.kind == XWing {
		prefix, size, b64 = xwingDERPrefix, xwingDERSize, xwingB64Size
	}
	copy(der[:], prefix)
	copy(der[len(prefix):], k.scalar[:])
	head := pemBegin +
		"Epoch: " + strconv.FormatUint(meta.Epoch, 10) + "\n" +
		"Not-After: " + meta.NotAfter.UTC().Truncate(time.Second).Format(time.RFC3339) + "\n" +
		"Not-Before: " + meta.NotBefore.UTC().Truncate(time.Second).Format(time.RFC3339) + "\n" +
		"Public-Key: " + base64.StdEncoding.EncodeToString(k.Public()) + "\n\n"
	out := make([]byte, 0, len(head)+b64+1+len(pemEnd))
	out = append(out, head...)
	out = out[:len(out)+b64]
	base64.StdEncoding.Encode(out[len(head):], der[:size])
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
		if err != nil || (len(b) != Size && len(b) != XWingPublicSize) {
			return nil, bad("Public-Key header is not 32 or 1216 bytes of base64")
		}
		p.meta.Public = b
	}
	// The body's length tells the kind: 64 base64 characters for X25519,
	// 72 for X-Wing (Decode checks the DER prefix).
	n := 0
	for _, c := range p.body {
		if c != '\n' && c != '\r' && c != ' ' && c != '\t' {
			n++
		}
	}
	if n == xwingB64Size {
		p.meta.Kind = XWing
	}
	if p.meta.Public != nil && (len(p.meta.Public) == XWingPublicSize) != (p.meta.Kind == XWing) {
		return nil, bad("Public-Key header of " + strconv.Itoa(len(p.meta.Public)) + " bytes for a " + p.meta.Kind.String() + " key")
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
	var b64 [2 * xwingB64Size]byte
	var der [xwingDERSize + 3]byte
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
	prefix, size, b64n := derPrefix, derSize, b64Size
	if p.meta.Kind == XWing {
		prefix, size, b64n = xwingDERPrefix, xwingDERSize, xwingB64Size
	}
	if n != b64n {
		return nil, Meta{}, bad("key body is not one X25519 or X-Wing PKCS#8 key")
	}
	m, err := base64.StdEncoding.Decode(der[:], b64[:n])
	if err != nil || m != size || string(der[:len(prefix)]) != prefix {
		return nil, Meta{}, bad("key body is not one X25519 or X-Wing PKCS#8 key")
	}
	k := &Key{kind: p.meta.Kind}
	copy(k.scalar[:], der[len(prefix):size])
	if k.kind == XWing {
		if err := k.xwingPublic(); err != nil {
			k.Wipe()
			return nil, Meta{}, bad(err.Error())
		}
	} else {
		X25519(&k.public, &k.scalar, &basePoint)
	}
	if p.meta.Public != nil && subtle.ConstantTimeCompare(p.meta.Public, k.Public()) != 1 {
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

// Set parses s with ParseKind into k (a flag.Value, pflag.Value).
func (k *Kind) Set(s string) error {
	v, err := ParseKind(s)
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Type names the flag's value type (pflag.Value).
func (k *Kind) Type() string { return "x25519|xwing" }

// ParseKind reads a Sphinx format name: "x25519" (or "", the default) or
// "xwing". Errors: any other name.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "", "x25519":
		return X25519Kind, nil
	case "xwing":
		return XWing, nil
	}
	return 0, fmt.Errorf("mixkey: unknown sphinx format %q (want x25519 or xwing)", s)
}
