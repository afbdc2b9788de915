package mixkey

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An X-Wing key file round-trips through Encode, Decode and ReadFile: the
// seed, the 1216-byte public key (the one crypto/hpke computes from the
// seed) and the Kind survive; the file is PEM whose DER carries the X-Wing
// OID and the seed; an X25519 file still decodes as X25519.
func TestXWingKeyFileRoundTrips(t *testing.T) {
	k, err := GenerateXWing(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := hpke.MLKEM768X25519().NewPrivateKey(k.Scalar()[:])
	if err != nil {
		t.Fatal(err)
	}
	if pub := k.Public(); len(pub) != XWingPublicSize || !bytes.Equal(pub, ref.PublicKey().Bytes()) {
		t.Fatalf("public key of %d bytes differs from crypto/hpke's", len(pub))
	}
	meta := Meta{Epoch: 7, NotBefore: time.Unix(1000, 0), NotAfter: time.Unix(2000, 0)}
	data := Encode(k, meta)
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("not a PEM PRIVATE KEY block:\n%s", data)
	}
	if want := append([]byte(xwingDERPrefix), k.Scalar()[:]...); !bytes.Equal(block.Bytes, want) {
		t.Fatalf("DER %x, want %x", block.Bytes, want)
	}
	path := filepath.Join(t.TempDir(), "mix-7.key")
	os.WriteFile(path, data, 0o600)
	got, m, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind() != XWing || m.Kind != XWing || m.Epoch != 7 || *got.Scalar() != *k.Scalar() || !bytes.Equal(m.Public, k.Public()) {
		t.Fatalf("read back kind %v/%v epoch %d, seed equal %v", got.Kind(), m.Kind, m.Epoch, *got.Scalar() == *k.Scalar())
	}
	pm, err := DecodePublic(data)
	if err != nil || pm.Kind != XWing || !bytes.Equal(pm.Public, k.Public()) {
		t.Fatalf("DecodePublic: %v, kind %v", err, pm.Kind)
	}
	var u, out [Size]byte
	u[0] = 9
	if got.ECDH(&out, &u) {
		t.Errorf("ECDH with an X-Wing key succeeded")
	}
	got.Wipe()
	if *got.Scalar() != ([Size]byte{}) || len(bytes.Trim(got.Public(), "\x00")) != 0 {
		t.Errorf("Wipe left the seed or public key")
	}

	x, _ := Generate(rand.Reader)
	xm, err := DecodePublic(Encode(x, meta))
	if err != nil || xm.Kind != X25519Kind || len(xm.Public) != Size {
		t.Fatalf("X25519 file: %v, kind %v, %d-byte public key", err, xm.Kind, len(xm.Public))
	}
}

// A Public-Key header that does not fit the key is refused: another X-Wing
// key's, or an X25519 key's on an X-Wing body (and the reverse).
func TestXWingKeyFileRefusesMismatchedPublicKey(t *testing.T) {
	meta := Meta{Epoch: 1, NotBefore: time.Unix(1000, 0), NotAfter: time.Unix(2000, 0)}
	a, _ := GenerateXWing(rand.Reader)
	b, _ := GenerateXWing(rand.Reader)
	x, _ := Generate(rand.Reader)
	swap := func(data []byte, pub []byte) []byte {
		lines := strings.Split(string(data), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "Public-Key: ") {
				lines[i] = "Public-Key: " + base64.StdEncoding.EncodeToString(pub)
			}
		}
		return []byte(strings.Join(lines, "\n"))
	}
	for name, data := range map[string][]byte{
		"another X-Wing key":         swap(Encode(a, meta), b.Public()),
		"an X25519 key on X-Wing":    swap(Encode(a, meta), x.Public()),
		"an X-Wing key on an X25519": swap(Encode(x, meta), a.Public()),
	} {
		if _, _, err := Decode(data); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: Decode error %v, want ErrFormat", name, err)
		}
	}
}
