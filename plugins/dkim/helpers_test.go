package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
)

// loadMessage reads testdata/message.eml: a sanitized-looking message with
// two To fields, a folded encoded Subject, 8-bit text, trailing blanks and
// empty lines at the end of the body.
func loadMessage(t testing.TB) *sdk.Message {
	t.Helper()
	raw, err := os.ReadFile("testdata/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte("\r\n\r\n")) + 4
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef",
		Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
		Header:   raw[:i], Body: raw[i:], Size: int64(len(raw))}
}

// opensslKey makes a key the way the README tells an operator to, with
// openssl alone, and returns the key file and the TXT record to publish.
// algo is "ed25519" or "rsa".
func opensslKey(t testing.TB, algo string) (keyFile, txt string) {
	t.Helper()
	peers.Ensure(t, "openssl", "openssl")
	keyFile = filepath.Join(t.TempDir(), algo+".key")
	gen := "openssl genpkey -algorithm ed25519 -out " + keyFile
	pub := "openssl pkey -in " + keyFile + " -pubout -outform DER | tail -c 32 | base64 -w0"
	if algo == "rsa" {
		gen = "openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048 -out " + keyFile
		pub = "openssl pkey -in " + keyFile + " -pubout -outform DER | base64 -w0"
	}
	for _, c := range []string{"umask 077; " + gen} {
		if out, err := exec.Command("sh", "-c", c).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
	}
	out, err := exec.Command("sh", "-c", pub).Output()
	if err != nil {
		t.Fatalf("%s: %v", pub, err)
	}
	return keyFile, "v=DKIM1; k=" + algo + "; p=" + strings.TrimSpace(string(out))
}

// signed returns the whole signed message: the change's header and the
// original body.
func signed(t testing.TB, m *sdk.Message, ch *sdk.Change) []byte {
	t.Helper()
	if ch == nil || ch.Header == nil || ch.Body != nil || ch.MailFrom != nil {
		t.Fatalf("want a change of the header only, got %+v", ch)
	}
	if !bytes.HasSuffix(ch.Header, m.Header) || !bytes.HasPrefix(ch.Header, []byte("DKIM-Signature: ")) {
		t.Fatalf("signed header is not DKIM-Signature + the original header:\n%s", ch.Header)
	}
	return append(append([]byte(nil), ch.Header...), m.Body...)
}

// tag returns the value of tag name in the first DKIM-Signature of msg,
// unfolded and without white space.
func tag(t testing.TB, msg []byte, name string) string {
	t.Helper()
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	var sig []string
	for i, l := range strings.Split(string(msg[:end]), "\r\n") {
		if i > 0 && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			break
		}
		sig = append(sig, l)
	}
	v := strings.Join(strings.Fields(strings.TrimPrefix(strings.Join(sig, ""), "DKIM-Signature:")), "")
	for _, p := range strings.Split(v, ";") {
		if k, val, ok := strings.Cut(p, "="); ok && k == name {
			return val
		}
	}
	t.Fatalf("no %s= tag in the signature", name)
	return ""
}
