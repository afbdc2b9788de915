package peers

import (
	"errors"
	"os/exec"
	"testing"
	"time"
)

// swaksPackages are swaks and the Perl modules its --tls needs.
var swaksPackages = []string{"swaks", "libnet-ssleay-perl", "libio-socket-inet6-perl", "libnet-dns-perl"}

// Swaks runs swaks (a real SMTP client, ~47 ms per message) with args, e.g.
// "--server", addr, "--from", "a@example.org", "--to", "b@example.net,c@example.net"
// (repeating --to keeps only the last: use a comma list), "--tls",
// "--data", "@msg.eml". It returns swaks's exit code and combined output;
// codes 23/24/25/26 mean MAIL/RCPT/DATA/end-of-data was refused. It fails
// the test only if swaks cannot run at all or runs over 60 s.
func Swaks(t testing.TB, args ...string) (int, string) {
	t.Helper()
	Ensure(t, "swaks", swaksPackages...)
	cmd := exec.Command(lookBin("swaks"), args...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("peers: swaks %v: timed out\n%s", args, out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("peers: swaks: %v", err)
	}
	return 0, string(out)
}
