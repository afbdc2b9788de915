package peers

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SinkPeer is a running smtp-sink (Postfix's test SMTP server): it accepts
// every message (no STARTTLS) and dumps each transaction to its own file.
type SinkPeer struct {
	// Addr is "127.0.0.1:port".
	Addr string
	// DumpDir holds one file per transaction: smtp-sink creates it at MAIL
	// FROM, completes it before its 250 to the final dot, and removes it
	// when the transaction is aborted (RSET, QUIT or disconnect).
	DumpDir string
	proc    *process
}

// SinkMessage is one transaction dumped by smtp-sink.
type SinkMessage struct {
	// Path of the dump file.
	Path string
	// MailArgs is the MAIL FROM argument line as received, e.g.
	// "<a@example.org> BODY=8BITMIME".
	MailArgs string
	// RcptArgs holds one RCPT TO argument line per recipient, e.g.
	// "<b@example.net>".
	RcptArgs []string
	// Data is the message as the client sent it, with LF line endings and
	// dots unstuffed (smtp-sink converts both), without the Received: field
	// smtp-sink prepends and the empty line it appends.
	Data []byte
}

// MailFrom is the reverse-path from MailArgs without angle brackets.
func (m SinkMessage) MailFrom() string { return pathOf(m.MailArgs) }

// RcptTo lists the forward-paths from RcptArgs without angle brackets.
func (m SinkMessage) RcptTo() []string {
	out := make([]string, len(m.RcptArgs))
	for i, a := range m.RcptArgs {
		out[i] = pathOf(a)
	}
	return out
}

func pathOf(args string) string {
	i, j := strings.IndexByte(args, '<'), strings.IndexByte(args, '>')
	if i < 0 || j < i {
		return ""
	}
	return args[i+1 : j]
}

// SmtpSink starts smtp-sink (package postfix, installed if missing) on a
// free 127.0.0.1 port with a backlog of 256, dumping messages to a temp dir.
// args are extra smtp-sink options placed before the address, e.g. "-r",
// "RCPT" (4xx to every RCPT) or "-q", "MAIL" (drop the connection at MAIL).
// It is stopped when the test ends.
func SmtpSink(t testing.TB, args ...string) *SinkPeer {
	t.Helper()
	Ensure(t, "smtp-sink", "postfix")
	uid, gid, _, err := lookupIDs("nobody", "")
	if err != nil {
		t.Fatalf("peers: smtp-sink: %v", err)
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		dir := peerDir(t, "smtp-sink")
		dump := filepath.Join(dir, "dump")
		if err := os.Mkdir(dump, 0o755); err != nil {
			t.Fatalf("peers: %v", err)
		}
		if err := os.Chown(dump, uid, gid); err != nil {
			t.Fatalf("peers: %v", err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		// smtp-sink as root must drop privileges (-u); the dump template
		// ends in "/" so each file is "<random hex>" in dump/.
		full := append([]string{"-u", "nobody", "-d", dump + "/"}, args...)
		full = append(full, addr, "256")
		p, err := startProcess("smtp-sink", lookBin("smtp-sink"), full, filepath.Join(dir, "smtp-sink.out"), nil, true)
		if err != nil {
			t.Fatalf("peers: %v", err)
		}
		if err := waitBanner(p, addr, "", 5*time.Second); err != nil {
			p.stop(syscall.SIGTERM, time.Second)
			last = err
			continue
		}
		t.Cleanup(func() { p.stop(syscall.SIGTERM, 2*time.Second) })
		return &SinkPeer{Addr: addr, DumpDir: dump, proc: p}
	}
	t.Fatalf("peers: smtp-sink: %v", last)
	return nil
}

// Count returns how many dump files exist: finished messages plus any
// transaction still in progress. Call it once the client has its replies.
func (s *SinkPeer) Count() int {
	es, _ := os.ReadDir(s.DumpDir)
	n := 0
	for _, e := range es {
		if e.Type().IsRegular() {
			n++
		}
	}
	return n
}

// WaitCount waits until at least n messages are dumped; it returns false if
// timeout passes first.
func (s *SinkPeer) WaitCount(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if s.Count() >= n {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Messages parses every dump file, sorted by file modification time.
func (s *SinkPeer) Messages() ([]SinkMessage, error) {
	es, err := os.ReadDir(s.DumpDir)
	if err != nil {
		return nil, err
	}
	type named struct {
		path string
		mod  time.Time
	}
	var files []named
	for _, e := range es {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		files = append(files, named{filepath.Join(s.DumpDir, e.Name()), info.ModTime()})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mod.Before(files[j].mod) })
	out := make([]SinkMessage, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		m, err := ParseSinkDump(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.path, err)
		}
		m.Path = f.path
		out = append(out, m)
	}
	return out, nil
}

// ParseSinkDump parses one smtp-sink dump: X-Client-Addr/X-Client-Proto/
// X-Helo-Args lines (ignored), X-Mail-Args, one X-Rcpt-Args per
// recipient, smtp-sink's own Received: field, the message, an empty line.
func ParseSinkDump(b []byte) (SinkMessage, error) {
	var m SinkMessage
	rest := b
	for {
		line, after, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return m, fmt.Errorf("smtp-sink dump ends inside its envelope lines")
		}
		name, val, _ := strings.Cut(string(line), ": ")
		switch name {
		case "X-Mail-Args":
			m.MailArgs = val
		case "X-Rcpt-Args":
			m.RcptArgs = append(m.RcptArgs, val)
		case "X-Client-Addr", "X-Client-Proto", "X-Helo-Args":
		default:
			if m.MailArgs == "" {
				return m, fmt.Errorf("smtp-sink dump without X-Mail-Args")
			}
			m.Data = stripSinkReceived(rest)
			m.Data = bytes.TrimSuffix(m.Data, []byte("\n"))
			return m, nil
		}
		rest = after
	}
}

// stripSinkReceived drops the first header field if it is the Received:
// field smtp-sink adds ("Received: from ... by smtp-sink ..." plus its
// folded continuation lines).
func stripSinkReceived(b []byte) []byte {
	if !bytes.HasPrefix(b, []byte("Received: ")) {
		return b
	}
	end := 0
	for {
		i := bytes.IndexByte(b[end:], '\n')
		if i < 0 {
			return b
		}
		end += i + 1
		if end >= len(b) || (b[end] != ' ' && b[end] != '\t') {
			break
		}
	}
	if !bytes.Contains(b[:end], []byte("by smtp-sink")) {
		return b
	}
	return b[end:]
}

// SourceOptions configure one smtp-source run. Zero values use
// smtp-source's defaults (1 session, 1 message, its own sender/recipient).
type SourceOptions struct {
	Sessions int    // -s: parallel sessions
	Size     int    // -l: message size in bytes (generated body)
	Count    int    // -m: messages in total
	From     string // -f
	To       string // -t
	File     string // -F: send this ready-made message file instead
	Reuse    bool   // -d: keep the connection open for several messages
	Args     []string
}

// SmtpSource runs smtp-source (package postfix, installed if missing)
// against addr ("127.0.0.1:port") and returns how long it took. The error
// includes smtp-source's output when it exits non-zero.
func SmtpSource(t testing.TB, addr string, o SourceOptions) (time.Duration, error) {
	t.Helper()
	Ensure(t, "smtp-source", "postfix")
	var args []string
	if o.Sessions > 0 {
		args = append(args, "-s", strconv.Itoa(o.Sessions))
	}
	if o.Size > 0 {
		args = append(args, "-l", strconv.Itoa(o.Size))
	}
	if o.Count > 0 {
		args = append(args, "-m", strconv.Itoa(o.Count))
	}
	if o.From != "" {
		args = append(args, "-f", o.From)
	}
	if o.To != "" {
		args = append(args, "-t", o.To)
	}
	if o.File != "" {
		args = append(args, "-F", o.File)
	}
	if o.Reuse {
		args = append(args, "-d")
	}
	args = append(args, o.Args...)
	args = append(args, addr)
	start := time.Now()
	out, err := exec.Command(lookBin("smtp-source"), args...).CombinedOutput()
	el := time.Since(start)
	if err != nil {
		return el, fmt.Errorf("smtp-source %v: %v\n%s", args, err, tail(out, 2000))
	}
	return el, nil
}
