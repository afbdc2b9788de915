package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// dkimpyVerify runs dkimpy (Debian's python3-dkim) on msg with the public
// key served by a stub DNS function; it returns dkimpy's verdict.
const dkimpyVerify = `
import sys, dkim
key = sys.argv[1]
msg = open(sys.argv[2], 'rb').read()
def dns(name, timeout=5):
    return ('v=DKIM1; k=ed25519; p=' + key).encode()
print('PASS' if dkim.verify(msg, dnsfunc=dns) else 'FAIL')
`

// TestPaddedMessageKeepsDKIMSignatureThroughRealHost: a message signed
// with DKIM (ed25519-sha256, go-msgauth) is padded by the plugin binary
// under the real plugin host; the result is a multiple of 8 KiB, the body
// is untouched, and dkimpy still verifies the signature. Negative control:
// changing one body byte makes dkimpy fail.
func TestPaddedMessageKeepsDKIMSignatureThroughRealHost(t *testing.T) {
	peers.Ensure(t, "/usr/bin/python3", "python3-dkim")
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	raw := []byte("From: a@example.org\r\nTo: b@example.net\r\nSubject: signed\r\nDate: Wed, 2 Dec 2026 08:00:00 +0000\r\n\r\nbody line\r\n.dot line\r\n")
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, bytes.NewReader(raw), &dkim.SignOptions{Domain: "example.org", Selector: "s", Signer: priv, HeaderKeys: []string{"From", "To", "Subject", "Date"}}); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(signed.Bytes(), []byte("\r\n\r\n")) + 4
	header, body := signed.Bytes()[:i], signed.Bytes()[i:]

	p := plugintest.Start(t, plugintest.Build(t, "."), `{}`)
	if p.Info().Needs != sdk.NeedHeader {
		t.Fatalf("needs %v, want the header only (the body never crosses RPC)", p.Info().Needs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := p.Transform(ctx, &sdk.Message{ID: "0123456789abcdef0123456789abcdef", Header: header, Size: int64(len(header) + len(body))})
	if err != nil {
		t.Fatal(err)
	}
	padded := append(append([]byte{}, ch.Header...), body...)
	if len(padded)%8192 != 0 || ch.Body != nil {
		t.Fatalf("padded size %d, body changed %v", len(padded), ch.Body != nil)
	}
	verify := func(m []byte) string {
		f := filepath.Join(t.TempDir(), "m.eml")
		os.WriteFile(f, m, 0o600)
		out, err := exec.Command("/usr/bin/python3", "-c", dkimpyVerify, base64.StdEncoding.EncodeToString(pub), f).CombinedOutput()
		if err != nil {
			t.Fatalf("dkimpy: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := verify(padded); got != "PASS" {
		t.Fatalf("dkimpy on the padded message: %s", got)
	}
	tampered := bytes.Replace(padded, []byte("body line"), []byte("body lime"), 1)
	if got := verify(tampered); got != "FAIL" {
		t.Fatalf("dkimpy on a tampered message: %s, want FAIL (the check must be able to fail)", got)
	}
}

// TestTransformerConformance runs the SDK's transformer contract on the
// plugin through the real host.
func TestTransformerConformance(t *testing.T) {
	bin := plugintest.Build(t, ".")
	plugintest.TransformerSuite{New: func(t *testing.T) sdk.Transformer {
		p := plugintest.Start(t, bin, `{}`)
		plugintest.CheckInfo(t, p.Info(), sdk.KindTransformer)
		return p
	}}.Run(t)
}
