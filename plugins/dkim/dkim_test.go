package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mixmta/mixmta/sdk"
)

func newTestSigner(t testing.TB, keyFile string) *signer {
	t.Helper()
	c, err := sdk.DecodeConfig(defaults, []byte(fmt.Sprintf(`{"domain":"example.org","selector":"sel","key_file":%q}`, keyFile)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := newDKIM(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// verifyGo checks msg with go-msgauth's verifier against record.
func verifyGo(msg []byte, record string) error {
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(string) ([]string, error) { return []string{record}, nil },
	})
	if err != nil {
		return err
	}
	if len(vs) != 1 {
		return fmt.Errorf("%d signatures", len(vs))
	}
	return vs[0].Err
}

func TestSignsWithTheKeysAlgorithmRelaxedRelaxed(t *testing.T) {
	for _, algo := range []string{"ed25519", "rsa"} {
		t.Run(algo, func(t *testing.T) {
			keyFile, record := opensslKey(t, algo)
			s := newTestSigner(t, keyFile)
			if rec, _ := txtRecord(s.key.Public()); rec != record {
				t.Fatalf("txtRecord\n%s\nwant (openssl)\n%s", rec, record)
			}
			m := loadMessage(t)
			ch, err := s.Transform(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			msg := signed(t, m, ch)
			if a := tag(t, msg, "a"); a != algo+"-sha256" {
				t.Fatalf("a=%s, want %s-sha256", a, algo)
			}
			if c := tag(t, msg, "c"); c != "relaxed/relaxed" {
				t.Fatalf("c=%s", c)
			}
			if d, sel := tag(t, msg, "d"), tag(t, msg, "s"); d != "example.org" || sel != "sel" {
				t.Fatalf("d=%s s=%s", d, sel)
			}
			if err := verifyGo(msg, record); err != nil {
				t.Fatalf("does not verify: %v", err)
			}
			tampered := bytes.Replace(msg, []byte("trailing blanks"), []byte("trailing blankz"), 1)
			if err := verifyGo(tampered, record); err == nil {
				t.Fatal("a changed body still verifies")
			}
		})
	}
}

func TestHeaderListSignsEachInstanceAndOversigns(t *testing.T) {
	keyFile, _ := opensslKey(t, "ed25519")
	s := newTestSigner(t, keyFile)
	m := loadMessage(t)
	ch, err := s.Transform(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	// message.eml has From, two To, Subject, Date, Message-ID, MIME-Version,
	// Content-Type, Content-Transfer-Encoding; no Reply-To, Cc,
	// In-Reply-To, References, Newsgroups.
	want := "From:From:Reply-To:Subject:Subject:Date:Date:Message-ID:Message-ID:To:To:To:Cc:" +
		"MIME-Version:MIME-Version:Content-Type:Content-Type:Content-Transfer-Encoding:Content-Transfer-Encoding"
	if h := tag(t, signed(t, m, ch), "h"); h != want {
		t.Fatalf("h=%s\nwant %s", h, want)
	}
}

func TestAddedOversignedFieldBreaksTheSignature(t *testing.T) {
	keyFile, record := opensslKey(t, "ed25519")
	s := newTestSigner(t, keyFile)
	m := loadMessage(t)
	ch, _ := s.Transform(context.Background(), m)
	msg := signed(t, m, ch)
	for _, field := range []string{"Subject: added later\r\n", "Reply-To: attacker@example.com\r\n"} {
		i := bytes.Index(msg, []byte("\r\n\r\n")) + 2
		added := append(append(append([]byte(nil), msg[:i]...), field...), msg[i:]...)
		if err := verifyGo(added, record); err == nil {
			t.Errorf("adding %q keeps the signature valid", strings.TrimSpace(field))
		}
	}
	// Control: a field outside the list may be added (e.g. Received).
	i := bytes.Index(msg, []byte("\r\n\r\n")) + 2
	added := append(append(append([]byte(nil), msg[:i]...), "X-Spam: no\r\n"...), msg[i:]...)
	if err := verifyGo(added, record); err != nil {
		t.Fatalf("an unsigned field broke the signature: %v", err)
	}
}

func writeKey(t *testing.T, key any, mode os.FileMode) string {
	t.Helper()
	var block *pem.Block
	switch k := key.(type) {
	case *rsa.PrivateKey:
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	default:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	p := filepath.Join(t.TempDir(), "k.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeyFileMustBeUnreadableByOthers(t *testing.T) {
	keyFile, _ := opensslKey(t, "ed25519")
	for _, c := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, false}, {0o644, false}, {0o604, false}, {0o620, false}} {
		if err := os.Chmod(keyFile, c.mode); err != nil {
			t.Fatal(err)
		}
		_, err := newDKIM(Config{Domain: "example.org", Selector: "s", KeyFile: keyFile, Headers: []string{"From"}}, nil)
		var fe *sdk.FieldError
		if c.ok && err != nil || !c.ok && (!errors.As(err, &fe) || fe.Field != "key_file" || !strings.Contains(err.Error(), "0600")) {
			t.Errorf("mode %04o: got %v", c.mode, err)
		}
	}
}

func TestUnusableKeysAreRefused(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	big, _ := rsa.GenerateKey(rand.Reader, 2048)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a key\n"), 0o600)
	encrypted := filepath.Join(dir, "enc")
	os.WriteFile(encrypted, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600)
	cases := []struct {
		name, file, want string
	}{
		{"RSA 1024", writeKey(t, small, 0o600), "at least 2048"},
		{"ECDSA", writeKey(t, ec, 0o600), "Ed25519 or RSA"},
		{"garbage", garbage, "no PEM block"},
		{"encrypted", encrypted, "encrypted"},
		{"missing", filepath.Join(dir, "none"), "no such file"},
		{"directory", dir, "not a regular file"},
	}
	for _, c := range cases {
		_, err := newDKIM(Config{Domain: "example.org", Selector: "s", KeyFile: c.file, Headers: []string{"From"}}, nil)
		var fe *sdk.FieldError
		if !errors.As(err, &fe) || fe.Field != "key_file" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want a key_file error containing %q, got %v", c.name, c.want, err)
		}
	}
	if _, err := newDKIM(Config{Domain: "example.org", Selector: "s", KeyFile: writeKey(t, big, 0o600), Headers: []string{"From"}}, nil); err != nil {
		t.Errorf("PKCS#1 RSA 2048: %v", err)
	}
}

func TestHeaderWithoutClosingEmptyLineIsCompleted(t *testing.T) {
	keyFile, record := opensslKey(t, "ed25519")
	s := newTestSigner(t, keyFile)
	for _, h := range []string{"From: a@example.org\r\nSubject: x\r\n", "From: a@example.org\r\nSubject: x"} {
		m := &sdk.Message{Header: []byte(h), Body: []byte{}}
		ch, err := s.Transform(context.Background(), m)
		if err != nil {
			t.Fatalf("%q: %v", h, err)
		}
		if !bytes.HasSuffix(ch.Header, []byte("Subject: x\r\n\r\n")) {
			t.Fatalf("%q: header not closed: %q", h, ch.Header)
		}
		if err := verifyGo(ch.Header, record); err != nil {
			t.Fatalf("%q: %v", h, err)
		}
	}
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	base := `"domain":"example.org","selector":"sel","key_file":"/k"`
	cases := []struct{ json, key string }{
		{`{` + base + `}`, ""},
		{`{"selector":"sel","key_file":"/k"}`, "domain"},
		{`{"domain":"exa mple.org","selector":"sel","key_file":"/k"}`, "domain"},
		{`{"domain":"example.org","selector":"","key_file":"/k"}`, "selector"},
		{`{"domain":"example.org","selector":"sel"}`, "key_file"},
		{`{` + base + `,"headers":["Subject"]}`, "headers"},
		{`{` + base + `,"headers":["From","Bad Name"]}`, "headers"},
		{`{` + base + `,"headers":["From","DKIM-Signature"]}`, "headers"},
		{`{` + base + `,"headers":["From"],"oversign":["Subject"]}`, "oversign"},
		{`{` + base + `,"headers":["from"],"oversign":["From"]}`, ""},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		if c.key == "" && err != nil || c.key != "" && (!errors.As(err, &fe) || fe.Field != c.key) {
			t.Errorf("%s: want error on %q, got %v", c.json, c.key, err)
		}
	}
}
