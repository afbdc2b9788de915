package mixkey

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RFC 7748 §5.2 test vectors, and agreement with crypto/ecdh on random
// keys (public key and shared secret).
func TestX25519MatchesRFC7748AndCryptoECDH(t *testing.T) {
	for _, v := range []struct{ k, u, out string }{
		{"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
			"e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
			"c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"},
		{"4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
			"e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
			"95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"},
	} {
		var k, u, got [Size]byte
		hex.Decode(k[:], []byte(v.k))
		hex.Decode(u[:], []byte(v.u))
		X25519(&got, &k, &u)
		if hex.EncodeToString(got[:]) != v.out {
			t.Errorf("X25519(%s, %s) = %x, want %s", v.k, v.u, got, v.out)
		}
	}
	for range 20 {
		ref, _ := ecdh.X25519().GenerateKey(rand.Reader)
		peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
		k, err := New(ref.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k.Public(), ref.PublicKey().Bytes()) {
			t.Fatalf("public key %x, crypto/ecdh says %x", k.Public(), ref.PublicKey().Bytes())
		}
		want, _ := ref.ECDH(peer.PublicKey())
		var u, got [Size]byte
		copy(u[:], peer.PublicKey().Bytes())
		if !k.ECDH(&got, &u) || !bytes.Equal(got[:], want) {
			t.Fatalf("ECDH %x, crypto/ecdh says %x", got, want)
		}
	}
	// A low-order point gives an all-zero secret: refused.
	k, _ := Generate(rand.Reader)
	var zero, out [Size]byte
	if k.ECDH(&out, &zero) {
		t.Errorf("ECDH with u = 0 accepted")
	}
}

func TestWipeZeroesTheKey(t *testing.T) {
	k, err := Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if *k.Scalar() == ([Size]byte{}) {
		t.Fatal("generated an all-zero scalar")
	}
	s := k.Scalar()
	k.Wipe()
	if *s != ([Size]byte{}) || !bytes.Equal(k.Public(), make([]byte, Size)) {
		t.Errorf("after Wipe: scalar %x, public %x; want zeros", *s, k.Public())
	}
	var nilKey *Key
	nilKey.Wipe()
}

var (
	testNotBefore = time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	testNotAfter  = testNotBefore.Add(70 * time.Minute)
)

// The file is standard: encoding/pem and x509 read what Encode writes,
// headers included, and Decode reads it back.
func TestEncodeIsStandardPEMPKCS8AndDecodes(t *testing.T) {
	k, _ := Generate(rand.Reader)
	data := Encode(k, Meta{Epoch: 491234, NotBefore: testNotBefore, NotAfter: testNotAfter})
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("not one PEM block: %q", data)
	}
	if block.Headers["Epoch"] != "491234" || block.Headers["Not-Before"] != "2026-12-02T08:00:00Z" ||
		block.Headers["Not-After"] != "2026-12-02T09:10:00Z" || len(block.Headers) != 4 {
		t.Errorf("headers %v", block.Headers)
	}
	std, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := std.(*ecdh.PrivateKey); !ok || !bytes.Equal(p.Bytes(), k.Scalar()[:]) {
		t.Fatalf("x509 reads another key: %T", std)
	}
	got, meta, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if *got.Scalar() != *k.Scalar() || !bytes.Equal(meta.Public, k.Public()) || meta.Epoch != 491234 ||
		!meta.NotBefore.Equal(testNotBefore) || !meta.NotAfter.Equal(testNotAfter) {
		t.Errorf("Decode: %+v", meta)
	}
	pub, err := DecodePublic(data)
	if err != nil || !bytes.Equal(pub.Public, k.Public()) {
		t.Errorf("DecodePublic: %+v, %v", pub, err)
	}
}

// A file written by encoding/pem without a Public-Key header (as before it
// existed) is read, the public key computed; a Public-Key header that does
// not match the scalar is refused; DecodePublic does not need the body.
func TestDecodeOldFilesAndMismatches(t *testing.T) {
	k, _ := Generate(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(mustECDH(t, k))
	old := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{
		"Epoch": "7", "Not-Before": testNotBefore.Format(time.RFC3339), "Not-After": testNotAfter.Format(time.RFC3339)}, Bytes: der})
	got, meta, err := Decode(old)
	if err != nil || *got.Scalar() != *k.Scalar() || !bytes.Equal(meta.Public, k.Public()) {
		t.Fatalf("old file: %+v, %v", meta, err)
	}
	if m, err := DecodePublic(old); err != nil || !bytes.Equal(m.Public, k.Public()) {
		t.Fatalf("DecodePublic of an old file: %+v, %v", m, err)
	}

	other, _ := Generate(rand.Reader)
	data := string(Encode(k, Meta{Epoch: 7, NotBefore: testNotBefore, NotAfter: testNotAfter}))
	otherData := string(Encode(other, Meta{Epoch: 7, NotBefore: testNotBefore, NotAfter: testNotAfter}))
	pubLine := func(s string) string { i := strings.Index(s, "Public-Key: "); return s[i : i+12+44] }
	swapped := strings.Replace(data, pubLine(data), pubLine(otherData), 1)
	if _, _, err := Decode([]byte(swapped)); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("Decode with another key's Public-Key header: %v", err)
	}
	body := strings.Split(data, "\n\n")[1][:64]
	garbled := strings.Replace(data, body, strings.Repeat("A", 64), 1)
	if m, err := DecodePublic([]byte(garbled)); err != nil || !bytes.Equal(m.Public, k.Public()) {
		t.Errorf("DecodePublic decoded the body: %+v, %v", m, err)
	}
	for _, bad := range []string{"", "junk", strings.Replace(data, "Epoch: 7", "Epoch: x", 1),
		strings.Replace(data, body, body[:60], 1), strings.Replace(data, "-----END PRIVATE KEY-----\n", "", 1)} {
		if _, _, err := Decode([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("Decode(%q) = %v, want ErrFormat", bad, err)
		}
	}
}

func TestReadFileRefusesFilesOpenToOthers(t *testing.T) {
	dir := t.TempDir()
	k, _ := Generate(rand.Reader)
	path := filepath.Join(dir, "mix-7.key")
	if err := os.WriteFile(path, Encode(k, Meta{Epoch: 7, NotBefore: testNotBefore, NotAfter: testNotAfter}), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadFile(path)
	if err != nil || *got.Scalar() != *k.Scalar() {
		t.Fatalf("ReadFile: %v", err)
	}
	os.Chmod(path, 0o640)
	if _, _, err := ReadFile(path); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("ReadFile of a 0640 file: %v, want ErrInsecurePermissions", err)
	}
	os.Chmod(path, 0o600)
	link := filepath.Join(dir, "link.key")
	os.Symlink(path, link)
	if _, _, err := ReadFile(link); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("ReadFile of a symbolic link: %v, want ErrInsecurePermissions", err)
	}
}

func mustECDH(t *testing.T, k *Key) *ecdh.PrivateKey {
	t.Helper()
	p, err := ecdh.X25519().NewPrivateKey(k.Scalar()[:])
	if err != nil {
		t.Fatal(err)
	}
	return p
}
