package peers

import (
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// INNConfig tunes INN. The zero value is the default.
type INNConfig struct {
	// Groups are the newsgroups that exist (all unmoderated, posting
	// allowed); default alt.test and local.test. POST to any other group
	// gets 441 ("No valid newsgroups").
	Groups []string
	// Users, when set, maps AUTHINFO user names to passwords (RFC 4643):
	// reading and posting then need AUTHINFO USER/PASS (480 before).
	// Default: 127.0.0.1 may read and post without authentication.
	Users map[string]string
	// TLS makes nnrpd offer STARTTLS (RFC 4642) in reader mode with a
	// self-signed certificate for 127.0.0.1 and localhost (INNPeer.Cert).
	TLS bool
}

// INNPeer is a running temp-dir INN 2.7 (innd) in transit mode: 127.0.0.1
// is a feeding peer, so IHAVE goes straight to innd, and a reader sends
// MODE READER to be handed to nnrpd for POST, ARTICLE and GROUP.
type INNPeer struct {
	// Addr is "127.0.0.1:port" of its NNTP listener (RFC 3977).
	Addr string
	Port int
	// Dir is the peer's root (etc, db, spool, log).
	Dir string
	// Cert is the STARTTLS certificate when INNConfig.TLS is set (its own
	// CA).
	Cert Cert
	conf string // inn.conf path (INNCONF)
	proc *process
}

// INN starts innd (Debian package inn2, installed together with postfix so
// apt does not pull another MTA) from a temp dir on a free 127.0.0.1 port,
// ready to take articles (about 0.1 s). It is stopped with `ctlinnd
// shutdown` when the test ends. cfg is optional.
func INN(t testing.TB, cfg ...INNConfig) *INNPeer {
	t.Helper()
	ensureINN(t)
	var c INNConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	if len(c.Groups) == 0 {
		c.Groups = []string{"alt.test", "local.test"}
	}
	if len(c.Users) > 0 {
		Ensure(t, "openssl", "openssl")
	}
	return startRetrying(t, "inn", func() (*INNPeer, error) { return startINN(t, c) })
}

// ensureINN installs inn2 together with postfix (so apt does not pull
// another MTA) when missing, the way Ensure does. inn2's postinst fails
// when the host name is not a fully qualified domain name (containers):
// then the packaged inn.conf gets a domain and dpkg finishes configuring.
func ensureINN(t testing.TB) {
	t.Helper()
	const innd = "/usr/lib/news/bin/innd"
	aptMu.Lock()
	defer aptMu.Unlock()
	if lookBin(innd) != "" && dpkgInstalled("inn2") && dpkgInstalled("postfix") {
		return
	}
	if os.Geteuid() != 0 {
		t.Fatalf("peers: inn2 is missing and installing it needs root")
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	run := func(args ...string) ([]byte, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755) == nil {
			defer os.Remove(policy)
		}
	}
	if !aptUpdated {
		if out, err := run("apt-get", "-o", "DPkg::Lock::Timeout=600", "update"); err != nil {
			t.Fatalf("peers: apt-get update: %v\n%s", err, tail(out, 3000))
		}
		aptUpdated = true
	}
	out, err := run("apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", "postfix", "inn2")
	if err != nil {
		if _, serr := os.Stat("/etc/news/inn.conf"); serr != nil {
			t.Fatalf("peers: apt-get install postfix inn2: %v\n%s", err, tail(out, 3000))
		}
		if out, err = run("sed", "-i", "-E", "s/^#?domain:.*/domain: example.test/", "/etc/news/inn.conf"); err == nil {
			out, err = run("dpkg", "--configure", "-a")
		}
	}
	if err != nil || lookBin(innd) == "" {
		t.Fatalf("peers: installing inn2: %v\n%s", err, tail(out, 3000))
	}
	installed["inn2"], installed["postfix"] = true, true
}

func startINN(t testing.TB, c INNConfig) (*INNPeer, error) {
	t.Helper()
	uid, gid, _, err := lookupIDs("news", "")
	if err != nil {
		return nil, err
	}
	dir := peerDir(t, "inn")
	port := FreePort(t)
	etc := filepath.Join(dir, "etc")
	if out, err := exec.Command("cp", "-a", "/etc/news", etc).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy /etc/news: %v: %s", err, out)
	}
	paths := map[string]string{
		"pathdb": "db", "pathspool": "spool", "patharticles": "spool/articles",
		"pathoverview": "spool/overview", "pathincoming": "spool/incoming",
		"pathtmp": "spool/incoming/tmp", "pathoutgoing": "spool/outgoing",
		"patharchive": "spool/archive", "pathlog": "log", "pathrun": "run",
		"pathhttp": "http",
	}
	set := map[string]string{
		"pathetc":       etc,
		"pathfilter":    filepath.Join(etc, "filter"),
		"port":          fmt.Sprint(port),
		"nnrpdpostport": fmt.Sprint(port),
		"bindaddress":   "127.0.0.1",
		"domain":        "example.test",
		"pathhost":      "news.example.test",
		"doinnwatch":    "false",
		// Articles from the test are not PGP-signed control messages.
		"pgpverify": "false",
		// The machine running the tests may be loaded; nnrpd must not refuse
		// readers with "400 load at N".
		"nnrpdloadlimit": "0",
	}
	for k, sub := range paths {
		p := filepath.Join(dir, sub)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, err
		}
		set[k] = p
	}
	var cert Cert
	if c.TLS {
		if cert, err = SelfSigned("127.0.0.1", "localhost"); err != nil {
			return nil, err
		}
		certFile, keyFile := filepath.Join(etc, "tls-cert.pem"), filepath.Join(etc, "tls-key.pem")
		if err := os.WriteFile(certFile, cert.CertPEM, 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile, cert.KeyPEM, 0o600); err != nil {
			return nil, err
		}
		set["tlscertfile"], set["tlskeyfile"], set["tlscafile"] = certFile, keyFile, certFile
	}
	conf := filepath.Join(etc, "inn.conf")
	if err := rewriteINNConf(conf, set); err != nil {
		return nil, err
	}
	files := map[string]string{
		// Transit mode: localhost feeds us (IHAVE); readers say MODE READER.
		"incoming.conf": "peer ME {\n  hostname: \"localhost, 127.0.0.1\"\n}\n",
		"newsfeeds":     "ME:*,!junk,!control*/!local::\n",
		"readers.conf":  readersConf(etc, c.Users),
	}
	var active strings.Builder
	for _, g := range append([]string{"control", "control.cancel", "junk"}, c.Groups...) {
		flag := "y"
		if strings.HasPrefix(g, "control") || g == "junk" {
			flag = "n"
		}
		fmt.Fprintf(&active, "%s 0000000000 0000000001 %s\n", g, flag)
	}
	if len(c.Users) > 0 {
		pw, err := ckpasswdFile(c.Users)
		if err != nil {
			return nil, err
		}
		files["passwd.nntp.test"] = pw
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	db := set["pathdb"]
	if err := os.WriteFile(filepath.Join(db, "active"), []byte(active.String()), 0o644); err != nil {
		return nil, err
	}
	for _, f := range []string{"newsgroups", "history"} {
		if err := os.WriteFile(filepath.Join(db, f), nil, 0o644); err != nil {
			return nil, err
		}
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil {
		return nil, err
	}
	env := []string{"INNCONF=" + conf, "PATH=/usr/lib/news/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
	mk := exec.Command("runuser", "-u", "news", "--", "/usr/lib/news/bin/makedbz", "-i", "-o", "-s", "1000")
	mk.Env = env
	if out, err := mk.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("makedbz: %v: %s", err, out)
	}
	proc, err := startProcess("innd", "/usr/lib/news/bin/innd", []string{"-f", "-c", "0"}, filepath.Join(dir, "innd.out"), env, true)
	if err != nil {
		return nil, err
	}
	p := &INNPeer{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, Dir: dir, Cert: cert, conf: conf, proc: proc}
	if err := waitBanner(proc, p.Addr, "20", 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	t.Cleanup(p.stop)
	return p, nil
}

// rewriteINNConf sets keys in inn.conf in place (INN refuses a key given
// twice) and appends those the file does not have.
func rewriteINNConf(path string, set map[string]string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		key, _, ok := strings.Cut(line, ":")
		key = strings.TrimSpace(key)
		if v, has := set[key]; ok && has && !strings.HasPrefix(key, "#") {
			line = fmt.Sprintf("%s: %s", key, v)
			done[key] = true
		}
		out = append(out, line)
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !done[k] {
			out = append(out, fmt.Sprintf("%s: %s", k, set[k]))
		}
	}
	return os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o644)
}

// readersConf lets 127.0.0.1 read and post, either freely or after
// AUTHINFO checked by INN's ckpasswd against a crypt(3) password file.
func readersConf(etc string, users map[string]string) string {
	if len(users) == 0 {
		return `auth "localhost" {
    hosts: "localhost, 127.0.0.1, stdin"
    default: "<localhost>"
}
access "localhost" {
    users: "<localhost>"
    newsgroups: "*"
    access: RPA
}
`
	}
	return fmt.Sprintf(`auth "users" {
    hosts: "localhost, 127.0.0.1"
    auth: "ckpasswd -f %s"
}
access "users" {
    users: "*"
    newsgroups: "*"
    access: RPA
}
`, filepath.Join(etc, "passwd.nntp.test"))
}

// ckpasswdFile renders user:crypt(password) lines (SHA-512 crypt by
// openssl, which glibc's crypt(3) in ckpasswd reads).
func ckpasswdFile(users map[string]string) (string, error) {
	var b strings.Builder
	for u, pw := range users {
		cmd := exec.Command(lookBin("openssl"), "passwd", "-6", "-stdin")
		cmd.Stdin = strings.NewReader(pw + "\n")
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("openssl passwd: %v", err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, strings.TrimSpace(string(out)))
	}
	return b.String(), nil
}

// stop shuts innd down with ctlinnd (about 1 s; SIGTERM alone can take
// minutes while innd flushes), then kills what is left.
func (p *INNPeer) stop() {
	if !p.proc.exited() {
		cmd := exec.Command("/usr/lib/news/bin/ctlinnd", "-t", "10", "shutdown", "test over")
		cmd.Env = []string{"INNCONF=" + p.conf}
		_ = cmd.Run()
	}
	p.proc.stop(syscall.SIGKILL, 5*time.Second)
}

// Log returns innd's own output (startup errors land here; articles are
// logged under Dir/log/news).
func (p *INNPeer) Log() string {
	b, _ := os.ReadFile(p.proc.log)
	n, _ := os.ReadFile(filepath.Join(p.Dir, "log", "news"))
	return string(b) + string(n)
}

// reader opens a reader session: greeting, MODE READER, and AUTHINFO
// USER/PASS when user is not empty. The caller closes the connection.
func (p *INNPeer) reader(user, pass string) (*textproto.Conn, error) {
	conn, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := textproto.NewConn(conn)
	steps := []struct {
		expect int
		line   string
	}{{20, ""}, {20, "MODE READER"}}
	if user != "" {
		steps = append(steps, struct {
			expect int
			line   string
		}{381, "AUTHINFO USER " + user}, struct {
			expect int
			line   string
		}{281, "AUTHINFO PASS " + pass})
	}
	for _, s := range steps {
		if s.line != "" {
			if err := c.PrintfLine("%s", s.line); err != nil {
				c.Close()
				return nil, err
			}
		}
		if code, msg, err := c.ReadCodeLine(s.expect); err != nil {
			c.Close()
			return nil, fmt.Errorf("%q: %d %s: %w", strings.Fields(s.line + " greeting")[0], code, msg, err)
		}
	}
	return c, nil
}

// ArticleByNumber fetches article number num of group (GROUP, then
// ARTICLE num), like Article.
func (p *INNPeer) ArticleByNumber(group string, num int, user, pass string) (article string, found bool, err error) {
	c, err := p.reader(user, pass)
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	if err := c.PrintfLine("GROUP %s", group); err != nil {
		return "", false, err
	}
	if _, _, err := c.ReadCodeLine(211); err != nil {
		return "", false, fmt.Errorf("GROUP: %w", err)
	}
	return readArticle(c, fmt.Sprint(num))
}

// Article fetches an article by Message-ID ("<x@y>") as a reader (MODE
// READER, AUTHINFO with user/pass when user is not empty, ARTICLE) and
// returns it with CRLF line endings and dots unstuffed. found is false on
// 430 (no such article); any other failure is an error.
func (p *INNPeer) Article(msgID, user, pass string) (article string, found bool, err error) {
	c, err := p.reader(user, pass)
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	return readArticle(c, msgID)
}

// readArticle sends ARTICLE arg and reads the article (220) or 423/430.
func readArticle(c *textproto.Conn, arg string) (string, bool, error) {
	if err := c.PrintfLine("ARTICLE %s", arg); err != nil {
		return "", false, err
	}
	code, msg, err := c.ReadCodeLine(220)
	if code == 423 {
		return "", false, nil
	}
	if code == 430 {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("ARTICLE: %d %s: %w", code, msg, err)
	}
	lines, err := c.ReadDotLines()
	if err != nil {
		return "", false, err
	}
	return strings.Join(lines, "\r\n") + "\r\n", true, nil
}

// WaitArticle polls Article until the article is there or timeout passes.
func (p *INNPeer) WaitArticle(t testing.TB, msgID, user, pass string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a, found, err := p.Article(msgID, user, pass)
		if err != nil {
			t.Fatalf("peers: inn: %v\n%s", err, tail([]byte(p.Log()), 3000))
		}
		if found {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers: inn: article %s not there after %s\n%s", msgID, timeout, tail([]byte(p.Log()), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// GroupCount returns the number of articles INN reports for group (GROUP
// as a reader; 211 count low high group).
func (p *INNPeer) GroupCount(group, user, pass string) (int, error) {
	c, err := p.reader(user, pass)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.PrintfLine("GROUP %s", group); err != nil {
		return 0, err
	}
	_, msg, err := c.ReadCodeLine(211)
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscan(msg, &n); err != nil {
		return 0, fmt.Errorf("GROUP reply %q: %v", msg, err)
	}
	return n, nil
}
