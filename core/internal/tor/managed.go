package tor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ManagedOptions configure a tor that mixmta starts itself.
type ManagedOptions struct {
	// Binary is the tor executable (looked up in PATH; default "tor").
	Binary string
	// DataDir is tor's DataDirectory (created 0700; tor refuses others).
	DataDir string
	// SocksPort on 127.0.0.1; 0 picks a free port at the first start,
	// kept across restarts (stages were configured with it).
	SocksPort int
	// ControlAddress is the ControlPort to open: "127.0.0.1:port" or
	// "unix:/path". Default unix:DATADIR/control (a socket only mixmta can
	// reach: the directory is 0700).
	ControlAddress string
	// CookieFile is where tor writes its control cookie. Default
	// DATADIR/control_auth_cookie.
	CookieFile string
	// Password, if set, is also accepted on the ControlPort (its hash
	// from `tor --hash-password` goes into HashedControlPassword).
	Password string
	// Torrc are extra torrc lines (e.g. a private network's DirAuthority).
	Torrc []string
	// BootstrapTimeout bounds the wait for "Bootstrapped 100%" (default 3m).
	BootstrapTimeout time.Duration
	// Log gets [TOR] lines.
	Log hclog.Logger
}

// Managed is a tor process owned by mixmta: started with its own
// DataDirectory, restarted with backoff when it dies, stopped (SIGTERM,
// then SIGKILL after 5 s) with mixmta. It cannot outlive mixmta: it is
// started with Pdeathsig, and __OwningControllerProcess plus
// TAKEOWNERSHIP make it exit when mixmta's pid or control connection is
// gone.
type Managed struct {
	opts ManagedOptions
	// SocksAddr is "127.0.0.1:port" of its SocksPort.
	SocksAddr string
	// ControlAddr is its ControlPort (ManagedOptions.ControlAddress).
	ControlAddr string

	hashedPassword string

	mu       sync.Mutex
	cmd      *exec.Cmd
	ctl      *Control
	exited   chan struct{}
	stopping bool
	onStart  []func(*Control) error
	done     chan struct{}
}

// StartManaged starts tor and returns once it is bootstrapped (100%) and
// its SocksPort accepts connections. ctx bounds the first start only.
func StartManaged(ctx context.Context, o ManagedOptions) (*Managed, error) {
	if o.Binary == "" {
		o.Binary = "tor"
	}
	if o.BootstrapTimeout == 0 {
		o.BootstrapTimeout = 3 * time.Minute
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	bin, err := exec.LookPath(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("tor: managed tor: %w (install Debian's tor package)", err)
	}
	o.Binary = bin
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	o.DataDir = abs
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(o.DataDir, 0o700); err != nil {
		return nil, err
	}
	if o.SocksPort == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		o.SocksPort = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	if o.ControlAddress == "" {
		o.ControlAddress = "unix:" + filepath.Join(o.DataDir, "control")
	}
	if o.CookieFile == "" {
		o.CookieFile = filepath.Join(o.DataDir, "control_auth_cookie")
	}
	m := &Managed{
		opts:        o,
		SocksAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(o.SocksPort)),
		ControlAddr: o.ControlAddress,
		done:        make(chan struct{}),
	}
	if o.Password != "" {
		// tor reads the password only from its command line: it is visible
		// in /proc for the instant the hashing takes.
		out, err := exec.Command(bin, "--quiet", "--hash-password", o.Password).Output()
		if err != nil {
			return nil, fmt.Errorf("tor: --hash-password: %w", err)
		}
		m.hashedPassword = strings.TrimSpace(string(out))
	}
	if err := m.start(ctx); err != nil {
		return nil, err
	}
	go m.supervise()
	return m, nil
}

// torrc is the managed tor's configuration. Listeners are on loopback and
// a unix socket only; SafeLogging keeps addresses out of tor's log.
func (m *Managed) torrc() string {
	o := m.opts
	lines := []string{
		"DataDirectory " + o.DataDir,
		"RunAsDaemon 0",
		"SocksPort 127.0.0.1:" + strconv.Itoa(o.SocksPort) + " ExtendedErrors IsolateSOCKSAuth",
		"ControlPort " + m.ControlAddr + unixFlags(m.ControlAddr),
		"CookieAuthentication 1",
		"CookieAuthFile " + o.CookieFile,
		"Log notice file " + filepath.Join(o.DataDir, "notice.log"),
		"SafeLogging 1",
		"__OwningControllerProcess " + strconv.Itoa(os.Getpid()),
		// Defaults of a client: no relaying, no DNSPort, no TransPort.
		"ClientOnly 1",
		"DNSPort 0",
	}
	if m.hashedPassword != "" {
		lines = append(lines, "HashedControlPassword "+m.hashedPassword)
	}
	return strings.Join(append(lines, o.Torrc...), "\n") + "\n"
}

// start launches tor once and waits for bootstrap.
func (m *Managed) start(ctx context.Context) error {
	o := m.opts
	torrc := filepath.Join(o.DataDir, "torrc")
	if err := os.WriteFile(torrc, []byte(m.torrc()), 0o600); err != nil {
		return err
	}
	if p, ok := strings.CutPrefix(m.ControlAddr, "unix:"); ok {
		_ = os.Remove(p)
	}
	none := filepath.Join(o.DataDir, "torrc-defaults")
	if err := os.WriteFile(none, nil, 0o600); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(o.DataDir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(o.Binary, "--defaults-torrc", none, "-f", torrc)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = []string{"HOME=" + o.DataDir, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("tor: start %s: %w", o.Binary, err)
	}
	out.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	m.mu.Lock()
	m.cmd, m.exited = cmd, exited
	m.mu.Unlock()
	o.Log.Info("[TOR] started tor", "pid", cmd.Process.Pid, "data_dir", o.DataDir)

	fail := func(err error) error {
		m.kill(cmd, exited)
		return fmt.Errorf("tor: %w (see %s)", err, filepath.Join(o.DataDir, "notice.log"))
	}
	deadline := time.Now().Add(o.BootstrapTimeout)
	var ctl *Control
	for ctl == nil {
		c, err := DialControl(m.ControlAddr, Auth{CookieFile: o.CookieFile}, 5*time.Second)
		if err == nil {
			ctl = c
			break
		}
		if e := waitStep(ctx, exited, deadline); e != nil {
			return fail(fmt.Errorf("control port never answered: %v (%w)", err, e))
		}
	}
	// Tor exits when this connection closes: no orphan even if mixmta is
	// killed with SIGKILL.
	if _, err := ctl.Cmd("TAKEOWNERSHIP"); err != nil {
		ctl.Close()
		return fail(err)
	}
	for {
		p, err := ctl.Bootstrapped()
		if err != nil {
			ctl.Close()
			return fail(err)
		}
		if p == 100 {
			break
		}
		if e := waitStep(ctx, exited, deadline); e != nil {
			ctl.Close()
			return fail(fmt.Errorf("bootstrap stuck at %d%%: %w", p, e))
		}
	}
	m.mu.Lock()
	m.ctl = ctl
	hooks := append([]func(*Control) error(nil), m.onStart...)
	m.mu.Unlock()
	for _, h := range hooks {
		if err := h(ctl); err != nil {
			o.Log.Error("[TOR] re-publishing after restart failed", "error", err)
		}
	}
	o.Log.Info("[TOR] bootstrapped", "socks", m.SocksAddr)
	return nil
}

var errExited = errors.New("tor exited")

// waitStep waits a short polling interval; it fails when tor exited, ctx
// ended or the deadline passed.
func waitStep(ctx context.Context, exited chan struct{}, deadline time.Time) error {
	if time.Now().After(deadline) {
		return errors.New("timed out")
	}
	select {
	case <-exited:
		return errExited
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(100 * time.Millisecond):
		return nil
	}
}

// supervise restarts tor when it exits unexpectedly, with backoff from 1 s
// doubling to 1 min.
func (m *Managed) supervise() {
	backoff := time.Second
	for {
		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		<-exited
		m.mu.Lock()
		if m.stopping {
			m.mu.Unlock()
			close(m.done)
			return
		}
		if m.ctl != nil {
			m.ctl.Close()
			m.ctl = nil
		}
		m.mu.Unlock()
		m.opts.Log.Error("[TOR] tor exited; restarting", "backoff", backoff)
		for {
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Minute)
			m.mu.Lock()
			stopping := m.stopping
			m.mu.Unlock()
			if stopping {
				close(m.done)
				return
			}
			if err := m.start(context.Background()); err != nil {
				m.opts.Log.Error("[TOR] restart failed", "error", err)
				continue
			}
			backoff = time.Second
			break
		}
	}
}

// Control returns the live control connection (nil while tor restarts).
func (m *Managed) Control() *Control {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctl
}

// OnStart registers f to run on the control connection after every
// (re)start, and runs it now: onion services are re-published this way
// after tor was restarted.
func (m *Managed) OnStart(f func(*Control) error) error {
	m.mu.Lock()
	m.onStart = append(m.onStart, f)
	ctl := m.ctl
	m.mu.Unlock()
	if ctl == nil {
		return nil // runs at the next start
	}
	return f(ctl)
}

// Pid is the current tor process id (0 if none).
func (m *Managed) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Close stops tor: SIGTERM, SIGKILL after 5 s (tor 0.4.9 has been seen to
// hang in shutdown).
func (m *Managed) Close() {
	m.mu.Lock()
	if m.stopping {
		m.mu.Unlock()
		return
	}
	m.stopping = true
	cmd, exited, ctl := m.cmd, m.exited, m.ctl
	m.mu.Unlock()
	if ctl != nil {
		ctl.Close()
	}
	m.kill(cmd, exited)
	<-m.done
}

func (m *Managed) kill(cmd *exec.Cmd, exited chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		m.opts.Log.Warn("[TOR] tor ignored SIGTERM for 5 s; killing it")
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// unixFlags: a unix ControlPort in the 0700 DataDirectory would fail
// tor's check that its directory is not group-accessible in other
// layouts; the directory's own mode protects it.
func unixFlags(addr string) string {
	if strings.HasPrefix(addr, "unix:") {
		return " RelaxDirModeCheck"
	}
	return ""
}
