package peers

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/net/proxy"
)

// TorNet is a private, offline Tor network on 127.0.0.1 made of Debian's
// tor (TestingTorNetwork): one directory authority, three relays (every
// relay is guard, middle and exit, and exits reach 127.0.0.0/8), one client
// with a SocksPort and a ControlPort, and one onion-service tor whose
// services tests add with AddOnion. It is ready in about 10 s.
//
// Limits of the test network (they hold for real Tor too, or are caused by
// being offline): exits cannot resolve host names (use IP literals such as
// 127.0.0.1 through an exit; .onion names work), and exits refuse streams to
// the relays' own ORPorts and DirPorts.
type TorNet struct {
	// Dir holds one directory per tor (torrc, notice.log, keys).
	Dir string
	// SocksAddr is the client's SocksPort, "127.0.0.1:port", with
	// ExtendedErrors (onion failures come back as SOCKS5 replies
	// 0xF0-0xF7) and IsolateSOCKSAuth (Tor's default).
	SocksAddr string
	// ControlAddr is the client's ControlPort; ControlCookie its
	// authentication cookie file (CookieAuthentication 1).
	ControlAddr   string
	ControlCookie string
	// HSControlAddr and HSControlCookie: the onion-service tor's
	// ControlPort, where AddOnion publishes services.
	HSControlAddr   string
	HSControlCookie string
	// DirAuthority is the torrc line naming the network's authority: with
	// ClientTorrc it lets another tor (one that mixmta starts) join.
	DirAuthority string

	nodes []*torNode
}

type torNode struct {
	name, dir string
	relay     bool // authority or relay
	proc      *process
}

// Tor network timing (seconds). The first consensus is scheduled
// torInitialVoting seconds after launch (TestingV3AuthVotingStartOffset is
// computed from now); votes and signatures need torVoteDelay each.
const (
	torInitialVoting = 6
	torVoting        = 10
	torVoteDelay     = 2
	torRelays        = 3 // besides the authority; onion services need >= 4 relays in all
	torReadyTimeout  = 120 * time.Second
)

var (
	sharedTorMu  sync.Mutex
	sharedTor    *TorNet
	sharedTorErr error
)

// Tor returns the test binary's Tor network, starting it on first use
// (tor is installed with apt-get when missing). Every test of the binary
// shares it: a network costs ~10 s and ~100 MiB. Every tor exits when the
// test process ends (__OwningControllerProcess, within ~15 s); a TestMain
// should call StopTor after m.Run to stop them at once and remove their
// files.
func Tor(t testing.TB) *TorNet {
	t.Helper()
	Ensure(t, "tor", "tor")
	Ensure(t, "tor-gencert", "tor")
	sharedTorMu.Lock()
	defer sharedTorMu.Unlock()
	if sharedTor == nil && sharedTorErr == nil {
		start := time.Now()
		sharedTor, sharedTorErr = startTorNet()
		if sharedTorErr != nil {
			// A port picked free can be taken by another test binary
			// before tor binds it: one fresh start on new ports.
			t.Logf("peers: tor test network: %v; starting it again", sharedTorErr)
			sharedTor, sharedTorErr = startTorNet()
		}
		if sharedTorErr == nil {
			t.Logf("peers: tor test network ready in %s (socks %s)", time.Since(start).Round(time.Millisecond), sharedTor.SocksAddr)
		}
	}
	if sharedTorErr != nil {
		t.Fatalf("peers: tor test network: %v", sharedTorErr)
	}
	return sharedTor
}

// StopTor stops the shared Tor network, if one was started, and removes its
// directory (kept when PEERS_KEEP is set).
func StopTor() {
	sharedTorMu.Lock()
	defer sharedTorMu.Unlock()
	if sharedTor != nil {
		sharedTor.stop()
		if os.Getenv("PEERS_KEEP") == "" {
			os.RemoveAll(sharedTor.Dir)
		}
		sharedTor = nil
	}
}

// ClientTorrc returns torrc lines that make a tor a client of this network
// (TestingTorNetwork, its authority, path options for a 4-relay network).
// A tor that mixmta starts in a test gets them as extra lines.
func (n *TorNet) ClientTorrc() []string {
	return []string{
		"TestingTorNetwork 1",
		"UseDefaultFallbackDirs 0",
		"PathsNeededToBuildCircuits 0.67",
		"UseEntryGuards 0",
		"VanguardsLiteEnabled 0",
		"ConfluxEnabled 0",
		n.DirAuthority,
	}
}

// AddOnion publishes a v3 onion service on the network's onion-service tor:
// virtual port virtPort forwards to target ("127.0.0.1:port"). It returns
// the address ("<56 chars>.onion") once tor reports the descriptor uploaded
// to an HSDir (HS_DESC UPLOADED): a client asking earlier would get "not
// found" and skip that HSDir for a while. The service is removed when the
// test ends.
func (n *TorNet) AddOnion(t testing.TB, virtPort int, target string) string {
	t.Helper()
	c, err := DialTorControl(n.HSControlAddr, n.HSControlCookie)
	if err != nil {
		t.Fatalf("peers: tor control: %v", err)
	}
	defer c.Close()
	if _, err := c.Cmd("SETEVENTS HS_DESC"); err != nil {
		t.Fatalf("peers: tor control: %v", err)
	}
	lines, err := c.Cmd(fmt.Sprintf("ADD_ONION NEW:ED25519-V3 Flags=Detach,DiscardPK Port=%d,%s", virtPort, target))
	if err != nil {
		t.Fatalf("peers: ADD_ONION: %v", err)
	}
	var id string
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "ServiceID="); ok {
			id = v
		}
	}
	if id == "" {
		t.Fatalf("peers: ADD_ONION answered no ServiceID: %q", lines)
	}
	t.Cleanup(func() {
		if c, err := DialTorControl(n.HSControlAddr, n.HSControlCookie); err == nil {
			_, _ = c.Cmd("DEL_ONION " + id)
			c.Close()
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		ev, err := c.Event(time.Until(deadline))
		if err != nil {
			t.Fatalf("peers: onion %s: no descriptor upload: %v", id, err)
		}
		// 650 HS_DESC UPLOADED <id> UNKNOWN <hsdir> ...
		if f := strings.Fields(ev); len(f) >= 3 && f[0] == "HS_DESC" && f[1] == "UPLOADED" && f[2] == id {
			return id + ".onion"
		}
	}
}

// DialSocks opens a TCP stream to addr through the network's client, with
// SOCKS5 username/password user:pass (isolation: different credentials,
// different circuits). An empty user means no authentication.
func (n *TorNet) DialSocks(ctx context.Context, addr, user, pass string) (net.Conn, error) {
	var auth *proxy.Auth
	if user != "" {
		auth = &proxy.Auth{User: user, Password: pass}
	}
	d, err := proxy.SOCKS5("tcp", n.SocksAddr, auth, &net.Dialer{Timeout: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	return d.(proxy.ContextDialer).DialContext(ctx, "tcp", addr)
}

// torTemplate renders one torrc. Each option is there because the network
// failed without it (measured with Debian's tor 0.4.9 on loopback).
var torTemplate = template.Must(template.New("torrc").Parse(`## common
TestingTorNetwork 1
DataDirectory {{.Dir}}
Nickname {{.Name}}
RunAsDaemon 0
Log notice file {{.Dir}}/notice.log
SafeLogging 0
LogTimeGranularity 1
# stop at once (relays wait 30 s by default)
ShutdownWaitLength 0
ControlPort 127.0.0.1:{{.ControlPort}}
CookieAuthentication 1
# every tor exits when the test process is gone
__OwningControllerProcess {{.Owner}}
# never the public network's fallback directories
UseDefaultFallbackDirs 0
# skip GeoIP parsing (~1 s per process)
GeoIPFile {{.Empty}}
GeoIPv6File {{.Empty}}
# build circuits once 2/3 of paths are possible (chutney)
PathsNeededToBuildCircuits 0.67
# with 4 relays a single guard is often also the rendezvous point, giving
# guard->X->guard circuits that relays refuse: no guards, no vanguards
UseEntryGuards 0
VanguardsLiteEnabled 0
{{- if .Relay}}
## relay
SocksPort 0
ContactInfo testnet@example.invalid
Address 127.0.0.1
ORPort 127.0.0.1:{{.ORPort}}
{{- if .DirPort}}
DirPort 127.0.0.1:{{.DirPort}}
DirCache 1
{{- else}}
# a cache without microdescriptors answers 404 and clients back off ~10 s
DirCache 0
{{- end}}
AssumeReachable 1
# exit to 127.0.0.0/8; "accept *:*" keeps the microdescriptor policy summary
# from saying "reject", else clients skip this exit
ExitRelay 1
ExitPolicyRejectPrivate 0
ExitPolicy accept 127.0.0.0/8:*
ExitPolicy accept private:*
ExitPolicy accept *:*
# offline: no resolver, host names do not resolve through exits
ServerDNSResolvConfFile /dev/null
ServerDNSDetectHijacking 0
ServerDNSTestAddresses
{{- else}}
## client / onion service
# conflux wants distinct guards and middles: impossible with 4 relays
ConfluxEnabled 0
{{- end}}
{{- if .Authority}}
## directory authority: flags from the first consensus (chutney rapid bootstrap)
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
TestingDirAuthVoteExit *
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
AuthDirFastGuarantee 1 byte
AuthDirVoteStableGuaranteeMinUptime 0
AuthDirVoteStableGuaranteeMTBF 0
TestingDirAuthVoteHSDir {{.HSDirs}}
TestingDirAuthVoteHSDirIsStrict 1
V3AuthNIntervalsValid 2
TestingV3AuthInitialVotingInterval {{.InitialVoting}}
# first vote relative to now, not to the wall-clock grid
TestingV3AuthVotingStartOffset {{.Offset}}
TestingV3AuthInitialVoteDelay {{.VoteDelay}}
TestingV3AuthInitialDistDelay {{.VoteDelay}}
V3AuthVotingInterval {{.Voting}}
V3AuthVoteDelay {{.VoteDelay}}
V3AuthDistDelay {{.VoteDelay}}
{{- end}}
{{- if .Socks}}
SocksPort 127.0.0.1:{{.Socks}} ExtendedErrors
{{- else if not .Relay}}
SocksPort 0
{{- end}}
{{- if .HS}}
# HS_DESC events tell when a descriptor reached an HSDir
Log [rend]info file {{.Dir}}/rend.log
{{- end}}
{{.DirAuthority}}
`))

type torrcData struct {
	Name, Dir, Empty                         string
	ControlPort, ORPort, DirPort, Socks      int
	Owner                                    int
	Relay, Authority, HS                     bool
	HSDirs, DirAuthority                     string
	InitialVoting, Offset, Voting, VoteDelay int
}

func startTorNet() (tn *TorNet, err error) {
	dir, err := os.MkdirTemp("", "mixmta-peer-tor-")
	if err != nil {
		return nil, err
	}
	started := &TorNet{Dir: dir}
	tn = started
	defer func() {
		if err != nil {
			// tn is nil after an error return: stop what was started.
			started.stop()
			if os.Getenv("PEERS_KEEP") == "" {
				os.RemoveAll(dir)
			} else {
				err = fmt.Errorf("%w (files kept in %s)", err, dir)
			}
		}
	}()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		return nil, err
	}
	var portErr error
	port := func() int {
		p, err := freePort()
		if err != nil {
			portErr = err
		}
		return p
	}

	// 1. Authority keys: RSA identity and signing keys (tor-gencert), then
	// the relay identity (tor --list-fingerprint) that names it.
	authDir := filepath.Join(dir, "auth0")
	if err := os.MkdirAll(filepath.Join(authDir, "keys"), 0o700); err != nil {
		return nil, err
	}
	authOR, authDirPort := port(), port()
	gencert := exec.Command(lookBin("tor-gencert"), "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
		"-i", filepath.Join(authDir, "keys/authority_identity_key"),
		"-s", filepath.Join(authDir, "keys/authority_signing_key"),
		"-c", filepath.Join(authDir, "keys/authority_certificate"),
		"-a", fmt.Sprintf("127.0.0.1:%d", authDirPort))
	gencert.Stdin = strings.NewReader("\n")
	if out, err := gencert.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tor-gencert: %v\n%s", err, tail(out, 2000))
	}
	none := filepath.Join(dir, "none")
	if out, err := exec.Command(lookBin("tor"), "--list-fingerprint", "--ignore-missing-torrc", "-f", none, "--defaults-torrc", none,
		"--DataDirectory", authDir, "--ORPort", "1").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tor --list-fingerprint: %v\n%s", err, tail(out, 2000))
	}
	fp, err := fieldAfter(filepath.Join(authDir, "fingerprint"), "", 1)
	if err != nil {
		return nil, err
	}
	v3, err := fieldAfter(filepath.Join(authDir, "keys/authority_certificate"), "fingerprint", 1)
	if err != nil {
		return nil, err
	}
	tn.DirAuthority = fmt.Sprintf("DirAuthority auth0 orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s", authOR, v3, authDirPort, fp)

	// 2. torrc files. Voting boundaries fall where (time mod interval) ==
	// offset: this offset puts the first consensus torInitialVoting
	// seconds from now.
	offset := int(time.Now().Unix() % torInitialVoting)
	base := torrcData{Empty: empty, Owner: os.Getpid(), DirAuthority: tn.DirAuthority,
		InitialVoting: torInitialVoting, Offset: offset, Voting: torVoting, VoteDelay: torVoteDelay, HSDirs: "$" + fp}
	add := func(name string, mod func(*torrcData)) (*torNode, error) {
		d := base
		d.Name, d.Dir, d.ControlPort = name, filepath.Join(dir, name), port()
		mod(&d)
		if err := os.MkdirAll(d.Dir, 0o700); err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := torTemplate.Execute(&b, d); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(d.Dir, "torrc"), b.Bytes(), 0o644); err != nil {
			return nil, err
		}
		node := &torNode{name: name, dir: d.Dir, relay: d.Relay}
		tn.nodes = append(tn.nodes, node)
		return node, nil
	}
	auth, err := add("auth0", func(d *torrcData) { d.Relay, d.Authority, d.ORPort, d.DirPort = true, true, authOR, authDirPort })
	if err != nil {
		return nil, err
	}
	relays := []*torNode{auth}
	for i := range torRelays {
		r, err := add(fmt.Sprintf("relay%d", i), func(d *torrcData) { d.Relay, d.ORPort = true, port() })
		if err != nil {
			return nil, err
		}
		relays = append(relays, r)
	}
	socks := port()
	client, err := add("client", func(d *torrcData) { d.Socks = socks })
	if err != nil {
		return nil, err
	}
	hs, err := add("hs", func(d *torrcData) { d.HS = true })
	if err != nil {
		return nil, err
	}
	if portErr != nil {
		return nil, portErr
	}
	tn.SocksAddr = fmt.Sprintf("127.0.0.1:%d", socks)
	tn.ControlAddr, tn.ControlCookie = controlOf(client)
	tn.HSControlAddr, tn.HSControlCookie = controlOf(hs)

	// 3. Start the relays, then the client and the onion-service tor.
	// Until the consensus lists every relay, fetches get 404 and tor backs
	// off for seconds: a SIGHUP resets that, so each non-authority gets one
	// once the consensus is complete.
	deadline := time.Now().Add(torReadyTimeout)
	for _, r := range relays {
		if err := tn.launch(r); err != nil {
			return nil, err
		}
	}
	if err := tn.waitLog(relays, "notice.log", "Bootstrapped 0%", deadline); err != nil {
		return nil, err
	}
	for _, c := range []*torNode{client, hs} {
		if err := tn.launch(c); err != nil {
			return nil, err
		}
	}
	total := len(relays)
	for consensusRelays(authDirPort) < total {
		if err := tn.check(deadline, "no consensus listing every relay"); err != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range relays[1:] {
		_ = r.proc.cmd.Process.Signal(syscall.SIGHUP)
	}
	// An exit lacking the consensus refuses streams "from unknown relay";
	// wait until every relay has every microdescriptor.
	for _, r := range relays[1:] {
		for microdescs(r.dir) < total {
			if err := tn.check(deadline, r.name+" lacks microdescriptors"); err != nil {
				return nil, err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := tn.waitLog([]*torNode{client, hs}, "notice.log", "Bootstrapped 0%", deadline); err != nil {
		return nil, err
	}
	for _, c := range []*torNode{client, hs} {
		_ = c.proc.cmd.Process.Signal(syscall.SIGHUP)
	}
	if err := tn.waitLog([]*torNode{client, hs}, "notice.log", "Bootstrapped 100%", deadline); err != nil {
		return nil, err
	}

	// 4. A real round trip client -> guard -> middle -> exit -> 127.0.0.1.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, derr := tn.DialSocks(ctx, l.Addr().String(), "", "")
		cancel()
		if derr == nil {
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			b, rerr := io.ReadAll(c)
			c.Close()
			if string(b) == "ok\n" {
				break
			}
			derr = fmt.Errorf("read %q: %v", b, rerr)
		}
		if err := tn.check(deadline, fmt.Sprintf("no stream through an exit: %v", derr)); err != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return tn, nil
}

func controlOf(n *torNode) (addr, cookie string) {
	b, _ := os.ReadFile(filepath.Join(n.dir, "torrc"))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ControlPort "); ok {
			addr = v
		}
	}
	return addr, filepath.Join(n.dir, "control_auth_cookie")
}

// launch starts one tor in the foreground with our own pid bookkeeping
// (tor deletes its PidFile at the start of shutdown, and 0.4.9 sometimes
// hangs in shutdown after that).
func (tn *TorNet) launch(n *torNode) error {
	none := filepath.Join(tn.Dir, "none")
	p, err := startProcess("tor "+n.name, lookBin("tor"),
		[]string{"--defaults-torrc", none, "--ignore-missing-torrc", "-f", filepath.Join(n.dir, "torrc")},
		filepath.Join(n.dir, "stdout.log"), []string{"HOME=" + n.dir, "PATH=/usr/bin:/bin"}, true)
	if err != nil {
		return err
	}
	n.proc = p
	return nil
}

// check returns an error when a tor died or the deadline passed.
func (tn *TorNet) check(deadline time.Time, what string) error {
	for _, n := range tn.nodes {
		if n.proc != nil && n.proc.exited() {
			return fmt.Errorf("tor %s exited: %v\n%s", n.name, n.proc.err, lastLines(filepath.Join(n.dir, "notice.log"), 2000))
		}
	}
	if time.Now().After(deadline) {
		var logs strings.Builder
		for _, n := range tn.nodes {
			fmt.Fprintf(&logs, "--- %s\n%s\n", n.name, lastLines(filepath.Join(n.dir, "notice.log"), 800))
		}
		return fmt.Errorf("%s after %s\n%s", what, torReadyTimeout, logs.String())
	}
	return nil
}

// waitLog waits until every node's log file contains s.
func (tn *TorNet) waitLog(nodes []*torNode, file, s string, deadline time.Time) error {
	for _, n := range nodes {
		for {
			b, _ := os.ReadFile(filepath.Join(n.dir, file))
			if bytes.Contains(b, []byte(s)) {
				break
			}
			if err := tn.check(deadline, fmt.Sprintf("tor %s: no %q in %s", n.name, s, file)); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// stop sends SIGTERM to every tor, and SIGKILL to those still running
// after 5 s (tor 0.4.9.11 sometimes ignores SIGTERM in shutdown).
func (tn *TorNet) stop() {
	var wg sync.WaitGroup
	for _, n := range tn.nodes {
		if n.proc != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.proc.stop(syscall.SIGTERM, 5*time.Second) }()
		}
	}
	wg.Wait()
}

// consensusRelays counts the relays ("r " lines) in the authority's current
// microdescriptor consensus, fetched over plain HTTP from its DirPort.
func consensusRelays(dirPort int) int {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", dirPort), time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET /tor/status-vote/current/consensus-microdesc HTTP/1.0\r\n\r\n"); err != nil {
		return 0
	}
	n := 0
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "r ") {
			n++
		}
	}
	return n
}

// microdescs counts the microdescriptors a tor has cached.
func microdescs(dir string) int {
	files, _ := filepath.Glob(filepath.Join(dir, "cached-microdescs*"))
	n := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		n += bytes.Count(b, []byte("\nntor-onion-key"))
		if bytes.HasPrefix(b, []byte("ntor-onion-key")) {
			n++
		}
	}
	return n
}

// fieldAfter returns field i (0-based, whitespace-separated) of the first
// line of file starting with key ("" = the first line).
func fieldAfter(file, key string, i int) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > i && (key == "" || f[0] == key) {
			return f[i], nil
		}
	}
	return "", fmt.Errorf("%s: no %q line", file, key)
}

func lastLines(file string, n int) string {
	b, _ := os.ReadFile(file)
	return string(tail(b, n))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
