package peers

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DovecotConfig tunes the Dovecot LMTP server. The zero value is the
// default.
type DovecotConfig struct {
	// Deny are recipient addresses Dovecot refuses at RCPT TO with
	// "550 5.1.1 <addr> User doesn't exist". Every other address is a
	// user with its own Maildir.
	Deny []string
}

// DovecotPeer is a running temp-dir Dovecot that accepts LMTP (RFC 2033)
// over TCP and a Unix socket and stores each user's mail in a Maildir.
type DovecotPeer struct {
	// Addr is "127.0.0.1:port" of the LMTP TCP listener.
	Addr string
	// Socket is the path of the LMTP Unix socket (mode 0666).
	Socket string
	// Dir is the peer's root (dovecot.conf, run, state, log, mail).
	Dir string
	// LogFile is Dovecot's log.
	LogFile string
	proc    *process
}

// Dovecot starts Dovecot (packages dovecot-core and dovecot-lmtpd,
// installed if missing) in the foreground from a temp dir, with LMTP on a
// free 127.0.0.1 port and on a Unix socket; ready in well under a second.
// Mail is stored as user 65534 (nobody) in Dir/mail/<domain>/<local part>.
// It is stopped with SIGTERM when the test ends.
func Dovecot(t testing.TB, cfg ...DovecotConfig) *DovecotPeer {
	t.Helper()
	Ensure(t, "/usr/lib/dovecot/lmtp", "dovecot-core", "dovecot-lmtpd")
	var c DovecotConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	return startRetrying(t, "dovecot", func() (*DovecotPeer, error) { return startDovecot(t, c) })
}

func startDovecot(t testing.TB, c DovecotConfig) (*DovecotPeer, error) {
	dir := peerDir(t, "dovecot")
	port := FreePort(t)
	p := &DovecotPeer{
		Addr:    fmt.Sprintf("127.0.0.1:%d", port),
		Socket:  filepath.Join(dir, "lmtp.sock"),
		Dir:     dir,
		LogFile: filepath.Join(dir, "log", "dovecot.log"),
	}
	for _, d := range []string{"run", "state", "log", "mail"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// Mail is written as nobody: Dovecot refuses uid 0 for mail users.
	if err := os.Chown(filepath.Join(dir, "mail"), 65534, 65534); err != nil {
		return nil, err
	}
	var deny strings.Builder
	for _, a := range c.Deny {
		deny.WriteString(a + ":::::\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "deny"), []byte(deny.String()), 0o644); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/log/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
mail_location = maildir:%[1]s/mail/%%d/%%n
passdb {
  driver = passwd-file
  args = username_format=%%u %[1]s/deny
  deny = yes
}
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=%[1]s/mail/%%d/%%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[2]d
  }
  unix_listener %[1]s/lmtp.sock {
    mode = 0666
  }
}
`, dir, port)
	file := filepath.Join(dir, "dovecot.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	proc, err := startProcess("dovecot", lookBin("dovecot"), []string{"-c", file, "-F"},
		filepath.Join(dir, "dovecot.out"), nil, true)
	if err != nil {
		return nil, err
	}
	p.proc = proc
	if err := waitBanner(proc, p.Addr, "220 ", 10*time.Second); err != nil {
		proc.stop(syscall.SIGTERM, 2*time.Second)
		b, _ := os.ReadFile(p.LogFile)
		return nil, fmt.Errorf("%v\n%s", err, tail(b, 3000))
	}
	if err := waitUnix(p.Socket, 5*time.Second); err != nil {
		proc.stop(syscall.SIGTERM, 2*time.Second)
		return nil, err
	}
	t.Cleanup(func() { proc.stop(syscall.SIGTERM, 3*time.Second) })
	return p, nil
}

// waitUnix waits until a Unix socket accepts a connection.
func waitUnix(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecot: socket %s not ready: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Mailbox returns the Maildir of addr (user@domain), as Dovecot lays it out.
func (p *DovecotPeer) Mailbox(addr string) string {
	local, domain, _ := strings.Cut(strings.ToLower(addr), "@")
	return filepath.Join(p.Dir, "mail", domain, local)
}

// Messages returns the files in addr's Maildir new/ and cur/, sorted.
func (p *DovecotPeer) Messages(addr string) []string {
	var out []string
	for _, sub := range []string{"new", "cur"} {
		m, _ := filepath.Glob(filepath.Join(p.Mailbox(addr), sub, "*"))
		out = append(out, m...)
	}
	sort.Strings(out)
	return out
}

// Log returns Dovecot's log so far.
func (p *DovecotPeer) Log() string {
	b, _ := os.ReadFile(p.LogFile)
	return string(b)
}
