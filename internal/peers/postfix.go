package peers

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostfixConfig tunes Postfix. The zero value is the default.
type PostfixConfig struct {
	// Domains are the virtual mailbox domains Postfix accepts mail for;
	// default example.net, example.org. Mail for any other domain is
	// refused at RCPT TO with 554 5.7.1 (relay access denied).
	Domains []string
	// CertHosts are the names and IPs the STARTTLS certificate is valid
	// for; default localhost, 127.0.0.1 and mx1.<each domain>.
	CertHosts []string
	// TLS is smtpd_tls_security_level: "may" (default: STARTTLS offered),
	// "none" (not offered) or "encrypt".
	TLS string
	// Main holds extra main.cf settings, "name = value" each, applied last.
	Main []string
	// Master holds extra master.cf services, "name/type = line" each
	// (postconf -M syntax), e.g. a transport run under torsocks.
	Master []string
}

// PostfixPeer is a running temp-dir Postfix acting as a receiving MX: every
// recipient in its domains is delivered to one Maildir.
type PostfixPeer struct {
	// Addr is "127.0.0.1:port" of its SMTP listener.
	Addr string
	Port int
	// Dir is the peer's root (etc, queue, data, mail, maillog).
	Dir string
	// MailDir is the Maildir every accepted recipient is delivered to
	// (new/, cur/, tmp/ below it).
	MailDir string
	// LogFile is Postfix's maillog.
	LogFile string
	// Cert is the STARTTLS certificate (self-signed; its own CA).
	Cert Cert
	proc *process
	// logStart is the maillog size once the readiness probe's session has
	// been logged: Log starts there.
	logStart int
}

var postfixQueueDirs = []struct {
	name  string
	mode  os.FileMode
	group string // "" root, else the group name
	owner bool   // owned by postfix (else root)
}{
	{"active", 0o700, "", true}, {"bounce", 0o700, "", true}, {"corrupt", 0o700, "", true},
	{"defer", 0o700, "", true}, {"deferred", 0o700, "", true}, {"flush", 0o700, "", true},
	{"hold", 0o700, "", true}, {"incoming", 0o700, "", true}, {"private", 0o700, "", true},
	{"saved", 0o700, "", true}, {"trace", 0o700, "", true},
	{"maildrop", 0o730, "postdrop", true}, {"public", 0o710, "postdrop", true},
	{"pid", 0o755, "", false},
}

// Postfix starts a temp-dir Postfix (the Debian package, installed if
// missing) listening on a free 127.0.0.1 port with STARTTLS (self-signed
// certificate) and Maildir delivery, ready to accept mail (about 0.3 s). It
// is stopped with SIGTERM when the test ends. cfg is optional.
func Postfix(t testing.TB, cfg ...PostfixConfig) *PostfixPeer {
	t.Helper()
	Ensure(t, "/usr/lib/postfix/sbin/master", "postfix")
	var c PostfixConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	if len(c.Domains) == 0 {
		c.Domains = []string{"example.net", "example.org"}
	}
	if len(c.CertHosts) == 0 {
		c.CertHosts = []string{"localhost", "127.0.0.1"}
		for _, d := range c.Domains {
			c.CertHosts = append(c.CertHosts, "mx1."+d)
		}
	}
	if c.TLS == "" {
		c.TLS = "may"
	}
	return startRetrying(t, "postfix", func() (*PostfixPeer, error) { return startPostfix(t, c) })
}

func startPostfix(t testing.TB, c PostfixConfig) (*PostfixPeer, error) {
	t.Helper()
	uid, gid, postdrop, err := lookupIDs("postfix", "postdrop")
	if err != nil {
		return nil, err
	}
	dir := peerDir(t, "postfix")
	port := FreePort(t)
	p := &PostfixPeer{
		Addr:    fmt.Sprintf("127.0.0.1:%d", port),
		Port:    port,
		Dir:     dir,
		MailDir: filepath.Join(dir, "mail", "inbox"),
		LogFile: filepath.Join(dir, "maillog"),
	}
	etc, queue, data, mail := filepath.Join(dir, "etc"), filepath.Join(dir, "queue"), filepath.Join(dir, "data"), filepath.Join(dir, "mail")
	for _, d := range []string{etc, queue, data, mail} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{data, mail} {
		if err := os.Chown(d, uid, gid); err != nil {
			return nil, err
		}
	}
	// Creating the queue tree ourselves saves `postfix start-fg`'s ~2.5 s
	// of postfix-script checks.
	for _, q := range postfixQueueDirs {
		path := filepath.Join(queue, q.name)
		if err := os.Mkdir(path, q.mode); err != nil {
			return nil, err
		}
		o, g := 0, 0
		if q.owner {
			o = uid
		}
		if q.group == "postdrop" {
			g = postdrop
		}
		if err := os.Chown(path, o, g); err != nil {
			return nil, err
		}
		if err := os.Chmod(path, q.mode); err != nil {
			return nil, err
		}
	}
	if p.Cert, err = SelfSigned(c.CertHosts...); err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(etc, "cert.pem"), filepath.Join(etc, "key.pem")
	if err := os.WriteFile(certFile, p.Cert.CertPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, p.Cert.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(etc, "master.cf"), master, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(etc, "main.cf"), nil, 0o644); err != nil {
		return nil, err
	}
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + queue,
		"data_directory = " + data,
		"myhostname = mx.peer.test",
		"mydestination =",
		"mynetworks = 127.0.0.1/32",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"smtpd_relay_restrictions = reject_unauth_destination",
		"smtpd_recipient_restrictions =",
		"alias_maps =",
		"alias_database =",
		"local_recipient_maps =",
		"biff = no",
		"smtputf8_enable = yes",
		"virtual_mailbox_domains = " + strings.Join(c.Domains, ", "),
		"virtual_mailbox_base = " + mail,
		"virtual_mailbox_maps = static:inbox/",
		fmt.Sprintf("virtual_uid_maps = static:%d", uid),
		fmt.Sprintf("virtual_gid_maps = static:%d", gid),
		"virtual_mailbox_limit = 0",
		"smtpd_tls_security_level = " + c.TLS,
		"smtpd_tls_cert_file = " + certFile,
		"smtpd_tls_key_file = " + keyFile,
		"smtpd_tls_loglevel = 1",
		"maillog_file = " + p.LogFile,
		"maillog_file_prefixes = " + dir,
	}
	main = append(main, c.Main...)
	postconf := func(args ...string) error {
		out, err := exec.Command(lookBin("postconf"), append([]string{"-c", etc}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("postconf %v: %v\n%s", args, err, out)
		}
		return nil
	}
	if err := postconf(append([]string{"-e"}, main...)...); err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	for _, args := range [][]string{
		{"-MX", "smtp/inet"},
		{"-M", listen + "/inet = " + listen + " inet n - n - - smtpd"},
		{"-M", "postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd"},
		// Debian's master.cf chroots daemons into the system queue dir.
		{"-F", "*/*/chroot = n"},
	} {
		if err := postconf(args...); err != nil {
			return nil, err
		}
	}
	for _, m := range c.Master {
		if err := postconf("-M", m); err != nil {
			return nil, err
		}
	}
	// master re-reads main.cf every 300 ms while it is under 2 s old.
	old := time.Now().Add(-time.Minute)
	for _, f := range []string{"main.cf", "master.cf"} {
		if err := os.Chtimes(filepath.Join(etc, f), old, old); err != nil {
			return nil, err
		}
	}
	proc, err := startProcess("postfix master", "/usr/lib/postfix/sbin/master",
		[]string{"-s", "-c", etc}, filepath.Join(dir, "master.out"),
		[]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG=" + etc}, false)
	if err != nil {
		return nil, err
	}
	p.proc = proc
	if err := waitBanner(proc, p.Addr, "220 ", 10*time.Second); err != nil {
		proc.stop(syscall.SIGTERM, 2*time.Second)
		return nil, fmt.Errorf("%v\nmaillog:\n%s", err, readTail(p.LogFile, 3000))
	}
	// Let the probe's "disconnect from" reach the maillog (postlogd writes
	// asynchronously) so Log shows only the test's own sessions.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(p.LogFile); strings.Contains(string(b), "disconnect from") {
			p.logStart = len(b)
			break
		}
	}
	t.Cleanup(func() {
		proc.stop(syscall.SIGTERM, 5*time.Second)
		if t.Failed() {
			t.Logf("peers: postfix maillog (tail):\n%s", readTail(p.LogFile, 4000))
		}
	})
	return p, nil
}

func readTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	return string(tail(b, n))
}

// Messages returns the paths of the messages delivered so far (Maildir new/
// and cur/), sorted by name (Maildir names start with the delivery time).
func (p *PostfixPeer) Messages() []string {
	return maildirFiles(p.MailDir)
}

// WaitMessages waits until at least n messages are delivered and returns
// their paths; it fails the test after timeout, showing the maillog.
func (p *PostfixPeer) WaitMessages(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := p.Messages()
		if len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers: postfix: %d messages delivered after %s, want %d\nmaillog:\n%s", len(m), timeout, n, readTail(p.LogFile, 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns the maillog since the peer became ready: the start-up lines
// and the readiness probe's session are left out, so a test can count
// "connect from" lines of its own sessions.
func (p *PostfixPeer) Log() string {
	b, _ := os.ReadFile(p.LogFile)
	if len(b) < p.logStart {
		return ""
	}
	return string(b[p.logStart:])
}

// maildirFiles lists regular files in dir/new and dir/cur.
func maildirFiles(dir string) []string {
	var out []string
	for _, sub := range []string{"new", "cur"} {
		es, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range es {
			if e.Type().IsRegular() {
				out = append(out, filepath.Join(dir, sub, e.Name()))
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return filepath.Base(out[i]) < filepath.Base(out[j]) })
	return out
}
