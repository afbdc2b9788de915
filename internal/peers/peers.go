// Package peers starts real third-party servers (Postfix, smtp-sink,
// dnsmasq) and runs real clients (smtp-source, swaks) for tests. Each peer
// runs from its own temp dir on a free 127.0.0.1 port and is stopped by PID
// when the test ends (t.Cleanup). A missing Debian package is installed
// with apt-get; if that fails the test fails: a peer is never skipped.
//
// Each recipe is the one that proved to work unattended: Postfix from a
// temp config dir without `postfix start-fg`, smtp-sink as root with -u,
// dnsmasq as an authoritative server for local= zones.
package peers

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// aptMu serialises package installs across a test binary: apt and dpkg hold
// global locks, and `apt-get update` needs to run only once.
var (
	aptMu      sync.Mutex
	aptUpdated bool
	installed  = map[string]bool{}
)

// Ensure makes sure the Debian packages pkgs are installed and bin (an
// absolute path or a name looked up in PATH and /usr/sbin) exists. If not,
// it runs `apt-get update` once per process and
// `apt-get install -y --no-install-recommends` for the missing packages.
// It fails the test when the install fails; it never skips.
func Ensure(t testing.TB, bin string, pkgs ...string) {
	t.Helper()
	aptMu.Lock()
	defer aptMu.Unlock()
	var missing []string
	for _, p := range pkgs {
		if !installed[p] && !dpkgInstalled(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 && (bin == "" || lookBin(bin) != "") {
		for _, p := range pkgs {
			installed[p] = true
		}
		return
	}
	if len(missing) == 0 {
		missing = pkgs
	}
	if os.Geteuid() != 0 {
		t.Fatalf("peers: %s is missing and installing %v needs root", bin, missing)
	}
	// Keep a system init from starting daemons (a system Postfix on :25)
	// while packages install (policy-rc.d convention, exit 101 = denied).
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		if os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755) == nil {
			defer os.Remove(policy)
		}
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if !aptUpdated {
		cmd := exec.Command("apt-get", "-o", "DPkg::Lock::Timeout=600", "update")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("peers: apt-get update: %v\n%s", err, tail(out, 4000))
		}
		aptUpdated = true
	}
	args := append([]string{"-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends"}, missing...)
	cmd := exec.Command("apt-get", args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peers: apt-get install %v: %v\n%s", missing, err, tail(out, 4000))
	}
	if bin != "" && lookBin(bin) == "" {
		t.Fatalf("peers: %s still missing after installing %v", bin, missing)
	}
	for _, p := range pkgs {
		installed[p] = true
	}
}

func dpkgInstalled(pkg string) bool {
	out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg).Output()
	return err == nil && strings.HasPrefix(string(out), "ii")
}

// lookBin returns the path of bin, also searching /usr/sbin and /sbin
// (go test may run with a PATH without them), or "".
func lookBin(bin string) string {
	if filepath.IsAbs(bin) {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
		return ""
	}
	if p, err := exec.LookPath(bin); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(d, bin)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// whose UDP twin was free too (dnsmasq binds both).
func FreePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("peers: free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return port
	}
	t.Fatalf("peers: no free port found")
	return 0
}

// peerDir makes a fresh directory for one peer that unprivileged daemons
// (postfix, nobody) can traverse: t.TempDir's parents are mode 0700. It is
// removed when the test ends unless PEERS_KEEP is set (for debugging: the
// configs and logs stay in /tmp/mixmta-peer-*).
func peerDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mixmta-peer-"+name+"-")
	if err != nil {
		t.Fatalf("peers: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("peers: %v", err)
	}
	if os.Getenv("PEERS_KEEP") == "" {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return dir
}

// startRetrying calls start up to three times and fails t with the last
// error: a free port picked for a peer is most likely taken by another
// process in between when start fails, and the next try picks another.
func startRetrying[P any](t testing.TB, name string, start func() (P, error)) P {
	t.Helper()
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := start()
		if err == nil {
			return p
		}
		last = err
	}
	t.Fatalf("peers: %s: %v", name, last)
	var zero P
	return zero
}

// process is a started peer daemon, stopped by PID.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string // file with its stdout and stderr
	done chan struct{}
	err  error // valid after done
}

// startProcess runs bin with args in its own process group (ownGroup; off
// for a daemon that calls setsid itself, which fails for a group leader),
// output to logFile. It does not wait for readiness.
func startProcess(name, bin string, args []string, logFile string, env []string, ownGroup bool) (*process, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	// Own process group (or session, for Postfix's master): children can be
	// killed by the group id of the process we started if it dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: ownGroup, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process, waits up to grace, then SIGKILLs its
// process group (our child's pgid == its pid: Setpgid, or setsid in the
// daemon; without either the group does not exist and the kill is a no-op).
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	pid := p.cmd.Process.Pid
	if !p.exited() {
		_ = syscall.Kill(pid, sig)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Leftover children of a daemon that did not clean up: same group.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// logTail returns the last n bytes of the process's output.
func (p *process) logTail(n int) string {
	b, _ := os.ReadFile(p.log)
	return string(tail(b, n))
}

// waitBanner dials addr until it answers with a line starting with prefix
// (e.g. "220 " for SMTP) or the process exits or timeout passes.
func waitBanner(p *process, addr, prefix string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited early: %v\n%s", p.name, p.err, p.logTail(3000))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 512)
			n, rerr := c.Read(buf)
			if prefix == "" || bytes.HasPrefix(buf[:n], []byte(prefix)) {
				if prefix != "" {
					_, _ = c.Write([]byte("QUIT\r\n"))
				}
				c.Close()
				return nil
			}
			c.Close()
			last = fmt.Errorf("banner %q (%v)", buf[:n], rerr)
		} else {
			last = err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready on %s after %s: %v\n%s", p.name, addr, timeout, last, p.logTail(3000))
}

// lookupIDs returns the numeric uid and gid of a system user and the gid of
// a group ("" skips the group).
func lookupIDs(name, group string) (uid, gid, ggid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, 0, err
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return 0, 0, 0, err
		}
		ggid, _ = strconv.Atoi(g.Gid)
	}
	return uid, gid, ggid, nil
}

// Serve accepts connections on l until the test ends (l is closed then)
// and runs handle on each in its own goroutine, closing the connection
// when handle returns: the accept loop of a test's fake server, relay or
// tap. It returns l's address ("127.0.0.1:port" for TCP).
func Serve(t testing.TB, l net.Listener, handle func(c net.Conn)) string {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// ServeTCP is Serve on a new TCP listener on a free 127.0.0.1 port.
func ServeTCP(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("peers: %v", err)
	}
	return Serve(t, l, handle)
}
