// Package e2e runs the real mixmta daemon and plugin binaries against real
// peers (swaks, smtp-source, smtp-sink, a temp-dir Postfix): the tests the
// foundation issue asks for, end to end.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
)

// binDir holds mixmta and every plugin, built once for the package.
var binDir string

// repoRoot is the module root (configs/ and plugins/ live there).
var repoRoot string

func TestMain(m *testing.M) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go env GOMOD:", err)
		os.Exit(2)
	}
	repoRoot = filepath.Dir(strings.TrimSpace(string(out)))
	dir, err := os.MkdirTemp("", "mixmta-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./core/cmd/mixmta", "./plugins/...")
	build.Dir = repoRoot
	if b, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build: %v\n%s", err, b)
		os.Exit(2)
	}
	binDir = dir
	before := entries(".")
	code := m.Run()
	// Tests write only under their temp dirs: anything new here is a
	// relative path that reached a process run from the source tree.
	for e := range entries(".") {
		if !before[e] {
			// Left in place: it may be a file someone is writing.
			fmt.Fprintf(os.Stderr, "e2e: a test wrote %s into the source tree\n", filepath.Join("core/e2e", e))
			code = 1
		}
	}
	peers.StopTor()
	os.RemoveAll(dir)
	os.Exit(code)
}

// entries lists dir's entries by name.
func entries(dir string) map[string]bool {
	des, _ := os.ReadDir(dir)
	m := map[string]bool{}
	for _, de := range des {
		m[de.Name()] = true
	}
	return m
}

// mixmtaCommand is exec.Command of the mixmta binary run from a fresh
// temp dir of t, so a relative path in its config (configs/local.yaml's
// ./var/maildir) never lands in the source tree.
func mixmtaCommand(t testing.TB, args ...string) *exec.Cmd {
	return mixmtaCommandContext(context.Background(), t, args...)
}

// mixmtaCommandContext is mixmtaCommand killed when ctx is done.
func mixmtaCommandContext(ctx context.Context, t testing.TB, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mixmta"), args...)
	cmd.Dir = t.TempDir()
	return cmd
}

// node is one running `mixmta serve` process.
type node struct {
	t       testing.TB
	cfgPath string
	dataDir string
	addr    string // first SMTP listener
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	mu      sync.Mutex
	wrap    []string // a command mixmta runs under (e.g. ip netns exec NS)
}

// profile loads a YAML profile (a path relative to the repo root, or YAML
// text), applies patches (dotted paths; a path segment is a map key, a list
// index, or a stage name inside `pipeline`), and points data_dir and
// plugin_dir at the test's dirs. It returns the written config path.
func profile(t testing.TB, src string, patches map[string]any) (cfgPath, dataDir string) {
	t.Helper()
	text := []byte(src)
	if !strings.Contains(src, "\n") {
		var err error
		if text, err = os.ReadFile(filepath.Join(repoRoot, src)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	all := map[string]any{"data_dir": dataDir, "plugin_dir": binDir}
	for k, v := range patches {
		all[k] = v
	}
	out, err := config.Patch(text, all)
	if err != nil {
		t.Fatalf("profile %s: %v", src, err)
	}
	cfgPath = filepath.Join(dir, "mixmta.yaml")
	if err := os.WriteFile(cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, dataDir
}

// startNode runs `mixmta serve` on cfgPath and waits until its SMTP
// listener answers with a 220 greeting.
func startNode(t testing.TB, cfgPath, dataDir, addr string) *node {
	t.Helper()
	n := &node{t: t, cfgPath: cfgPath, dataDir: dataDir, addr: addr, logPath: filepath.Join(filepath.Dir(cfgPath), "mixmta.log")}
	n.start()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("mixmta log (last 60 lines):\n%s", tailLines(n.log(), 60))
		}
	})
	return n
}

func (n *node) start() {
	n.t.Helper()
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	args := append(append([]string{}, n.wrap...), filepath.Join(binDir, "mixmta"), "serve", "-c", n.cfgPath)
	cmd := exec.Command(args[0], args[1:]...)
	// A relative path in a profile (configs/local.yaml's ./var/maildir)
	// lands beside the config, in the test's temp dir.
	cmd.Dir = filepath.Dir(n.cfgPath)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	n.cmd, n.logFile = cmd, f
	n.mu.Unlock()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			n.t.Fatalf("mixmta exited at start:\n%s", tailLines(n.log(), 40))
		default:
		}
		if greet(n.addr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("mixmta did not listen on %s within 20 s:\n%s", n.addr, tailLines(n.log(), 40))
}

func greet(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		fmt.Fprintf(c, "QUIT\r\n")
	}
	return err == nil && strings.HasPrefix(line, "220")
}

// pid returns the daemon's pid.
func (n *node) pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process.Pid
}

// stop sends SIGTERM and waits (SIGKILL after 30 s).
func (n *node) stop() {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	waitGone(cmd.Process.Pid, 30*time.Second)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	n.logFile.Close()
}

// kill9 kills the daemon with SIGKILL (not its process group: plugins must
// notice on their own) and returns the pids of its plugin processes.
func (n *node) kill9() []int {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	kids := children(cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	waitGone(cmd.Process.Pid, 10*time.Second)
	n.logFile.Close()
	return kids
}

func (n *node) log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// children lists the pids whose parent is pid (from /proc).
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid(p) == pid {
			out = append(out, p)
		}
	}
	return out
}

func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// pid (comm) state ppid ...; comm may hold spaces: cut after the last ')'.
	s := string(b[bytes.LastIndexByte(b, ')')+2:])
	f := strings.Fields(s)
	if len(f) < 2 {
		return -1
	}
	v, _ := strconv.Atoi(f[1])
	return v
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b[bytes.LastIndexByte(b, ')')+2:])
	return !strings.HasPrefix(s, "Z") // a zombie has exited
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return !alive(pid)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns a free 127.0.0.1 address.
func freeAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", peers.FreePort(t))
}
