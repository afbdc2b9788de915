package peers

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// dkimVerifyScript verifies the DKIM signatures of the message on stdin
// with dkimpy, looking keys up at the DNS server on 127.0.0.1:argv[1]
// (dnspython reads only /etc/resolv.conf, which cannot name a port).
const dkimVerifyScript = `import logging, sys
import dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ['127.0.0.1']
r.port = int(sys.argv[1])
dns.resolver.default_resolver = r
import dkim
logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format='%(message)s')
msg = sys.stdin.buffer.read()
try:
    d = dkim.DKIM(msg, logger=logging.getLogger())
    n = len([h for h in d.headers if h[0].lower() == b'dkim-signature'])
    ok = n > 0 and all(d.verify(idx=i) for i in range(n))
except dkim.DKIMException as e:
    print('error: %s' % e)
    print('signature verification failed')
    sys.exit(1)
except Exception as e:
    print('error: %s' % e)
    sys.exit(2)
print('signatures: %d' % n)
print('signature ok' if ok else 'signature verification failed')
sys.exit(0 if ok else 1)
`

// DKIMVerify checks every DKIM-Signature of msg with dkimpy (Debian's
// python3-dkim, installed if missing; run by /usr/bin/python3), an
// independent verifier, which fetches the public keys from the DNS server
// at dnsAddr ("127.0.0.1:port", e.g. a Dnsmasq peer with the key's TXT
// record). LF line endings in msg are turned into CRLF first, as on the
// wire. It reports whether every signature verified (and there was at
// least one) and dkimpy's output with its reasons ("body hash mismatch").
func DKIMVerify(t testing.TB, dnsAddr string, msg []byte) (bool, string) {
	t.Helper()
	Ensure(t, "/usr/bin/python3", "python3-dkim")
	_, port, ok := strings.Cut(dnsAddr, ":")
	if n, err := strconv.Atoi(port); !ok || err != nil || n <= 0 || !strings.HasPrefix(dnsAddr, "127.0.0.1:") {
		t.Fatalf("peers: DKIMVerify: DNS address %q is not 127.0.0.1:port", dnsAddr)
	}
	script := filepath.Join(t.TempDir(), "dkimverify.py")
	if err := os.WriteFile(script, []byte(dkimVerifyScript), 0o644); err != nil {
		t.Fatal(err)
	}
	crlf := bytes.ReplaceAll(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	cmd := exec.Command("/usr/bin/python3", script, port)
	cmd.Stdin = bytes.NewReader(crlf)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, string(out)
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, string(out)
	}
	t.Fatalf("peers: dkimpy failed: %v\n%s", err, out)
	return false, ""
}
