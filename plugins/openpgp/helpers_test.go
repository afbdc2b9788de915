package main

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-message/textproto"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// loadMessage reads a testdata message for rcpts.
func loadMessage(t testing.TB, name string, rcpts ...string) *sdk.Message {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte("\r\n\r\n")) + 4
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef", Envelope: sdk.Envelope{RcptTo: rcpts},
		Header: raw[:i], Body: raw[i:], Size: int64(len(raw))}
}

// gnupg is one user's GnuPG home with one key pair.
type gnupg struct {
	t    testing.TB
	home string
}

// newGnuPG makes a GnuPG home in a short temp dir (the agent's socket path
// must stay short) with a fresh key for uid: ed25519 with a cv25519
// encryption subkey ("future-default").
func newGnuPG(t testing.TB, uid string) *gnupg {
	t.Helper()
	peers.Ensure(t, "gpg", "gnupg")
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	g := &gnupg{t: t, home: home}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	g.run(nil, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-gen-key", uid, "future-default", "default", "never")
	return g
}

// run runs gpg in the home and returns stdout; it fails the test on error.
func (g *gnupg) run(stdin []byte, args ...string) []byte {
	g.t.Helper()
	out, err := g.try(stdin, args...)
	if err != nil {
		g.t.Fatalf("gpg %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (g *gnupg) try(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command("gpg", append([]string{"--homedir", g.home, "--batch", "--quiet", "--no-tty"}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, &gpgError{err, stderr.String()}
	}
	return out, nil
}

type gpgError struct {
	err    error
	stderr string
}

func (e *gpgError) Error() string { return e.err.Error() + ": " + e.stderr }

// exportTo writes the armored public key of addr to dir/<addr>.asc.
func (g *gnupg) exportTo(dir, addr string) {
	g.t.Helper()
	pub := g.run(nil, "--armor", "--export", addr)
	if !bytes.Contains(pub, []byte("BEGIN PGP PUBLIC KEY BLOCK")) {
		g.t.Fatalf("gpg exported no key for %s", addr)
	}
	if err := os.WriteFile(filepath.Join(dir, addr+".asc"), pub, 0o644); err != nil {
		g.t.Fatal(err)
	}
}

// pgpParts checks that msg is PGP/MIME as RFC 3156 §4 defines it and
// returns its outer header and the armored OpenPGP message of part 2:
// Content-Type multipart/encrypted with protocol
// "application/pgp-encrypted"; exactly two body parts; the first
// application/pgp-encrypted holding "Version: 1"; the second
// application/octet-stream holding an armored PGP MESSAGE.
func pgpParts(t testing.TB, msg []byte) (textproto.Header, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(msg))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("outer header: %v", err)
	}
	if v := h.Get("Mime-Version"); v != "1.0" {
		t.Fatalf("MIME-Version %q", v)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || params["boundary"] == "" {
		t.Fatalf("outer Content-Type %q (%v)", h.Get("Content-Type"), err)
	}
	mr := textproto.NewMultipartReader(br, params["boundary"])
	var parts []struct {
		h    textproto.Header
		body []byte
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, struct {
			h    textproto.Header
			body []byte
		}{p.Header, b})
	}
	if len(parts) != 2 {
		t.Fatalf("%d body parts, want 2", len(parts))
	}
	if mt, _, _ := mime.ParseMediaType(parts[0].h.Get("Content-Type")); mt != "application/pgp-encrypted" || !bytes.Contains(parts[0].body, []byte("Version: 1")) {
		t.Fatalf("part 1: %q %q", parts[0].h.Get("Content-Type"), parts[0].body)
	}
	if mt, _, _ := mime.ParseMediaType(parts[1].h.Get("Content-Type")); mt != "application/octet-stream" ||
		!bytes.HasPrefix(parts[1].body, []byte("-----BEGIN PGP MESSAGE-----")) {
		t.Fatalf("part 2: %q %.60q", parts[1].h.Get("Content-Type"), parts[1].body)
	}
	return h, parts[1].body
}

// splitEntity splits a MIME entity into its header and body.
func splitEntity(t testing.TB, b []byte) (textproto.Header, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(b))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("entity header: %v", err)
	}
	body, _ := io.ReadAll(br)
	return h, body
}

// pluginBinary builds the plugin once per test run.
func pluginBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "openpgp-test-")
		if buildErr == nil {
			_, buildErr = plugintest.BuildTo(".", builtDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(builtDir, "openpgp")
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}
