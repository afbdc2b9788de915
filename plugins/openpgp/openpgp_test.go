package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// goKey makes a key pair with go-crypto (fast; the GnuPG tests use real
// GnuPG keys) and writes the armored public key to dir/<addr>.asc.
func goKey(t testing.TB, dir, addr string, cfg *packet.Config) *openpgp.Entity {
	t.Helper()
	if cfg == nil {
		cfg = &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	}
	e, err := openpgp.NewEntity("", "", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if dir != "" {
		if err := os.WriteFile(filepath.Join(dir, addr+".asc"), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// decryptGo decrypts a PGP/MIME copy with e's secret key.
func decryptGo(t testing.TB, msg []byte, e *openpgp.Entity) ([]byte, error) {
	t.Helper()
	_, armored := pgpParts(t, msg)
	block, err := armor.Decode(bytes.NewReader(armored))
	if err != nil {
		return nil, err
	}
	md, err := openpgp.ReadMessage(block.Body, openpgp.EntityList{e}, nil, nil)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(md.UnverifiedBody)
}

func newTestStage(t testing.TB, keys, policy string, protect bool) *stage {
	t.Helper()
	c := Config{KeysDir: keys, MissingKey: policy, ProtectSubject: protect}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := newStage(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rcptSets(routes []sdk.Route) (encrypted, clear []string) {
	for _, r := range routes {
		if r.Body != nil {
			encrypted = append(encrypted, r.RcptTo...)
		} else {
			clear = append(clear, r.RcptTo...)
		}
	}
	slices.Sort(encrypted)
	slices.Sort(clear)
	return
}

func TestMissingKeyPolicies(t *testing.T) {
	keys := t.TempDir()
	goKey(t, keys, "bob@example.net", nil)
	cases := []struct {
		policy string
		rcpts  []string
		enc    []string
		clear  []string
		err    string // RFC 3463 code of the stage error, "" for none
		temp   bool
	}{
		{policyClear, []string{"bob@example.net", "eve@example.net"}, []string{"bob@example.net"}, []string{"eve@example.net"}, "", false},
		{policyReject, []string{"bob@example.net", "eve@example.net"}, []string{"bob@example.net"}, nil, "", false},
		{policyReject, []string{"eve@example.net", "mallory@example.net"}, nil, nil, "5.7.0", false},
		{policyHold, []string{"bob@example.net", "eve@example.net"}, nil, nil, "4.7.0", true},
		{policyHold, []string{"bob@example.net", "bob@example.net"}, []string{"bob@example.net"}, nil, "", false},
	}
	for _, c := range cases {
		s := newTestStage(t, keys, c.policy, false)
		routes, err := s.Route(context.Background(), loadMessage(t, "multipart.eml", c.rcpts...))
		name := c.policy + " " + strings.Join(c.rcpts, ",")
		if c.err != "" {
			e := sdk.AsError(err)
			if e == nil || e.EnhancedCode() != c.err || e.Temporary != c.temp || routes != nil {
				t.Errorf("%s: want error %s, got %v (%d routes)", name, c.err, err, len(routes))
			}
			if e != nil && strings.Contains(e.Message, "@") {
				t.Errorf("%s: error names an address: %q", name, e.Message)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		enc, clear := rcptSets(routes)
		if !slices.Equal(enc, c.enc) || !slices.Equal(clear, c.clear) {
			t.Errorf("%s: encrypted %v clear %v, want %v and %v", name, enc, clear, c.enc, c.clear)
		}
	}
}

func TestHeldMessageGoesOutOnceTheKeyArrives(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys") // does not exist yet
	s := newTestStage(t, keys, policyHold, false)
	m := loadMessage(t, "multipart.eml", "bob@example.net")
	if _, err := s.Route(context.Background(), m); sdk.AsError(err) == nil || !sdk.AsError(err).Temporary {
		t.Fatalf("without a key: want a temporary error, got %v", err)
	}
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	bob := goKey(t, keys, "bob@example.net", nil)
	routes, err := s.Route(context.Background(), m)
	if err != nil || len(routes) != 1 || routes[0].Body == nil {
		t.Fatalf("with the key: %v, %d routes", err, len(routes))
	}
	if _, err := decryptGo(t, routes[0].Body, bob); err != nil {
		t.Fatalf("bob cannot decrypt: %v", err)
	}
	// The key is replaced (same file, new content): the new one is used.
	bob2 := goKey(t, keys, "bob@example.net", nil)
	future := time.Now().Add(2 * time.Second)
	os.Chtimes(filepath.Join(keys, "bob@example.net.asc"), future, future)
	routes, _ = s.Route(context.Background(), m)
	if _, err := decryptGo(t, routes[0].Body, bob2); err != nil {
		t.Fatalf("the replaced key was not picked up: %v", err)
	}
	if _, err := decryptGo(t, routes[0].Body, bob); err == nil {
		t.Fatal("the old key still decrypts the new copy")
	}
}

func TestUnusableKeyFilesCountAsNoKey(t *testing.T) {
	keys := t.TempDir()
	// Expired: created two days ago, valid for one.
	expired := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, KeyLifetimeSecs: 86400,
		Time: func() time.Time { return time.Now().Add(-48 * time.Hour) }}
	goKey(t, keys, "expired@example.net", expired)
	// A secret key file.
	e := goKey(t, "", "secret@example.net", nil)
	var b bytes.Buffer
	w, _ := armor.Encode(&b, openpgp.PrivateKeyType, nil)
	e.SerializePrivate(w, nil)
	w.Close()
	os.WriteFile(filepath.Join(keys, "secret@example.net.asc"), b.Bytes(), 0o600)
	os.WriteFile(filepath.Join(keys, "garbage@example.net.asc"), []byte("not a key"), 0o644)
	// A good key that group or others may replace.
	goKey(t, keys, "writable@example.net", nil)
	os.Chmod(filepath.Join(keys, "writable@example.net.asc"), 0o664)
	// Outside the directory, reachable only by path traversal.
	goKey(t, filepath.Dir(keys), "x@example.net", nil)
	var logs bytes.Buffer
	s, err := newStage(Config{KeysDir: keys, MissingKey: policyClear}, hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"expired@example.net", "secret@example.net", "garbage@example.net", "writable@example.net", "../x@example.net", ".hidden@example.net", "nobody@example.net"} {
		routes, err := s.Route(context.Background(), loadMessage(t, "multipart.eml", r))
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if enc, clear := rcptSets(routes); len(enc) != 0 || len(clear) != 1 {
			t.Errorf("%s: want the keyless policy (clear), got encrypted %v", r, enc)
		}
	}
	if !strings.Contains(logs.String(), "a key file is unusable") || strings.Contains(logs.String(), "@") {
		t.Fatalf("want a warning for each unusable key file, naming no address; log:\n%s", logs.String())
	}
	if fileName("../x@example.net") != "" || fileName("Bob@Example.NET") != "bob@example.net.asc" {
		t.Fatal("fileName does not refuse traversal or lower-case the address")
	}
	// Unicode case mapping must not lead another mailbox to karl's key:
	// U+212A KELVIN SIGN lower-cases to "k".
	if got := fileName("\u212Aarl@example.net"); got == "karl@example.net.asc" {
		t.Fatalf("fileName maps a different mailbox to %q", got)
	}
}

func TestWithoutProtectionTheInnerPartIsTheContentOnly(t *testing.T) {
	keys := t.TempDir()
	bob := goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, false)
	m := loadMessage(t, "multipart.eml", "bob@example.net")
	routes, err := s.Route(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	outer, _ := pgpParts(t, routes[0].Body)
	if outer.Get("Subject") != "The secret subject line" {
		t.Fatalf("outer Subject %q, want the original without protect_subject", outer.Get("Subject"))
	}
	plain, err := decryptGo(t, routes[0].Body, bob)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("Content-Type: multipart/alternative;\r\n boundary=\"alt-boundary-1\"\r\n\r\n"), m.Body...)
	if !bytes.Equal(plain, want) {
		t.Fatalf("inner entity\n%q\nwant\n%q", plain, want)
	}
}

func TestMessageWithoutContentTypeBecomesExplicitTextPlain(t *testing.T) {
	keys := t.TempDir()
	bob := goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, true)
	m := &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
		Header: []byte("From: a@example.org\r\nTo: bob@example.net\r\n\r\n"), Body: []byte("plain\r\n")}
	routes, err := s.Route(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	outer, _ := pgpParts(t, routes[0].Body)
	if outer.Has("Subject") {
		t.Fatal("an outer Subject was invented for a message without one")
	}
	plain, _ := decryptGo(t, routes[0].Body, bob)
	want := "Content-Type: text/plain; charset=us-ascii; protected-headers=\"v1\"\r\nFrom: a@example.org\r\nTo: bob@example.net\r\n\r\nplain\r\n"
	if string(plain) != want {
		t.Fatalf("inner entity %q\nwant %q", plain, want)
	}
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct{ json, key string }{
		{`{"keys_dir":"/k"}`, ""},
		{`{}`, "keys_dir"},
		{`{"keys_dir":"/k","missing_key":"drop"}`, "missing_key"},
		{`{"keys_dir":"/k","missing_key":"clear","protect_subject":false}`, ""},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		if c.key == "" && err != nil || c.key != "" && (!errors.As(err, &fe) || fe.Field != c.key) {
			t.Errorf("%s: want error on %q, got %v", c.json, c.key, err)
		}
	}
}

func TestKeysDirWritableByOthersIsNotTrusted(t *testing.T) {
	keys := t.TempDir()
	goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, false)
	m := loadMessage(t, "multipart.eml", "bob@example.net")
	if _, err := s.Route(context.Background(), m); err != nil {
		t.Fatalf("control, keys_dir 0700: %v", err)
	}
	os.Chmod(keys, 0o777)
	defer os.Chmod(keys, 0o700)
	if _, err := s.Route(context.Background(), m); sdk.AsError(err) == nil || sdk.AsError(err).EnhancedCode() != "5.7.0" {
		t.Fatalf("keys_dir 0777: want the key ignored (5.7.0 under reject), got %v", err)
	}
}

// TestProtectedSubjectLeavesNoCopyOutside: with protect_subject, the
// fields that repeat or describe the Subject (Outlook's Thread-Topic,
// Keywords, Comments, Summary) are not left readable in the outer header,
// whatever their spelling, and travel inside with the Subject.
func TestProtectedSubjectLeavesNoCopyOutside(t *testing.T) {
	keys := t.TempDir()
	bob := goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, true)
	m := &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
		Header: []byte("From: a@example.org\r\nSubject: SECRET-1\r\nThread-Topic: SECRET-2\r\nkeywords: SECRET-3\r\n" +
			"COMMENTS: SECRET-4\r\nSummary: SECRET-5\r\n\r\n"), Body: []byte("body\r\n")}
	routes, err := s.Route(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	enc := routes[0].Body
	outer := enc[:bytes.Index(enc, []byte("\r\n\r\n"))]
	if bytes.Contains(outer, []byte("SECRET")) {
		t.Fatalf("outer header carries a protected value:\n%s", outer)
	}
	plain, err := decryptGo(t, enc, bob)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if !bytes.Contains(plain, []byte("SECRET-"+string(rune('0'+i)))) {
			t.Errorf("SECRET-%d is not inside:\n%s", i, plain)
		}
	}
}

// TestInlineBlockWithClearTextIsEncrypted: a text body that opens with an
// armored PGP MESSAGE but carries clear text after it (or before it) is
// not "encrypted already": it is encrypted, so the clear text is not
// stored readable. The body that is only the block passes unchanged.
func TestInlineBlockWithClearTextIsEncrypted(t *testing.T) {
	keys := t.TempDir()
	goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, false)
	block := "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA0j1c2RhcmsBB/9=\r\n=abcd\r\n-----END PGP MESSAGE-----\r\n"
	for name, tc := range map[string]struct {
		body      string
		unchanged bool
	}{
		"block only":        {"\r\n" + block + "\r\n", true},
		"clear text after":  {block + "\r\nCLEAR reply text\r\n", false},
		"clear text before": {"CLEAR intro\r\n" + block, false},
		"second block":      {block + "CLEAR\r\n" + block, false},
	} {
		m := &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
			Header: []byte("From: a@example.org\r\nSubject: s\r\n\r\n"), Body: []byte(tc.body)}
		routes, err := s.Route(context.Background(), m)
		if err != nil || len(routes) != 1 {
			t.Fatalf("%s: %v %v", name, routes, err)
		}
		if got := routes[0].Body == nil; got != tc.unchanged {
			t.Errorf("%s: passed unchanged = %v, want %v", name, got, tc.unchanged)
		}
		if routes[0].Body != nil && bytes.Contains(routes[0].Body, []byte("CLEAR")) {
			t.Errorf("%s: clear text in the stored copy", name)
		}
	}
}

// TestSMIMEPassesOnlyWhenItSaysEncrypted: application/pkcs7-mime passes
// unchanged only with smime-type enveloped-data or authEnveloped-data.
// Without smime-type it may be opaque signed-data (clear text in DER, as
// older clients send it), so it is encrypted.
func TestSMIMEPassesOnlyWhenItSaysEncrypted(t *testing.T) {
	keys := t.TempDir()
	goKey(t, keys, "bob@example.net", nil)
	s := newTestStage(t, keys, policyReject, false)
	for ctype, unchanged := range map[string]bool{
		"application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m":      true,
		"application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m":  true,
		"application/x-pkcs7-mime; name=smime.p7m":                               false,
		"application/pkcs7-mime; smime-type=signed-data; name=smime.p7m":         false,
		"application/pkcs7-mime; smime-type=unknown-future-type; name=smime.p7m": false,
	} {
		m := &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
			Header: []byte("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: " + ctype + "\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
			Body:   []byte("MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0B\r\n")}
		routes, err := s.Route(context.Background(), m)
		if err != nil || len(routes) != 1 {
			t.Fatalf("%s: %v %v", ctype, routes, err)
		}
		if got := routes[0].Body == nil; got != unchanged {
			t.Errorf("%s: passed unchanged = %v, want %v", ctype, got, unchanged)
		}
	}
}
