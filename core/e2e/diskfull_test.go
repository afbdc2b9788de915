package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// smallTmpfs mounts a tmpfs of size MiB on a new temp dir and unmounts it
// when the test ends (after the node using it has stopped: cleanups run
// last-in first-out, so call this before startNode).
func smallTmpfs(t *testing.T, mib int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0700", mib), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (the test needs root): %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

func statfsFree(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fillTo writes a filler file in dir until the filesystem has at most
// free bytes left.
func fillTo(t *testing.T, dir string, free int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		over := statfsFree(t, dir) - free
		if over <= 0 {
			return p
		}
		n := min(over, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatalf("filling %s: %v", dir, err)
		}
	}
}

// sendReply sends one message and returns the reply that ended the
// transaction: "250" when accepted, else the refusing reply as
// "CODE X.Y.Z" with the command it answered.
func sendReply(addr, tok string, size int) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return "", err
	}
	refused := func(cmd string, err error) (string, error) {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return fmt.Sprintf("%s %d %d.%d.%d", cmd, se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]), nil
		}
		return "", err
	}
	if err := c.Mail("a@example.org", nil); err != nil {
		return refused("MAIL", err)
	}
	if err := c.Rcpt("b@example.net", nil); err != nil {
		return refused("RCPT", err)
	}
	w, err := c.Data()
	if err != nil {
		return refused("DATA", err)
	}
	fmt.Fprintf(w, "Subject: full\r\n\r\n%s\r\n", tok)
	line := bytes.Repeat([]byte("y"), 998)
	for n := 0; n < size; n += len(line) + 2 {
		w.Write(line)
		w.Write([]byte("\r\n"))
	}
	if err := w.Close(); err != nil {
		return refused("DATA", err)
	}
	c.Quit()
	return "250", nil
}

// TestDiskFullGets452AndLosesNothing: the data dir is on a 160 MiB tmpfs
// with a 48 MiB reserve. Once a filler file and the queue leave less than
// the reserve, MAIL/DATA get 452 4.3.1 and the daemon keeps running; it
// restarts on the full disk and still answers 452; when space returns it
// accepts again, and every message that got 250 is delivered exactly once.
func TestDiskFullGets452AndLosesNothing(t *testing.T) {
	sink := peers.SmtpSink(t)
	mnt := smallTmpfs(t, 160)
	const reserve = 48 << 20
	addr := freeAddr(t)
	data := filepath.Join(mnt, "data")
	cfg, _ := profile(t, fmt.Sprintf(`hostname: mixmta.invalid
log:
  level: info
scheduler:
  window: 100ms
queue:
  free_space_reserve: %d
listeners:
  - name: in
    address: %s
    relay:
      networks: [127.0.0.1/32]
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`, reserve, addr, sink.Addr), map[string]any{"data_dir": data})
	n := startNode(t, cfg, data, addr)
	pid := n.pid()
	filler := fillTo(t, mnt, reserve+6<<20)

	var acked []string
	replies := map[string]int{}
	full := 0
	for i := 0; i < 200 && full < 5; i++ {
		tok := fmt.Sprintf("tok-98-%06d-%016x", i, time.Now().UnixNano())
		r, err := sendReply(addr, tok, 256<<10)
		if err != nil {
			t.Fatalf("message %d: %v (daemon alive: %v)\n%s", i, err, alive(pid), tailLines(n.log(), 30))
		}
		replies[r]++
		if r == "250" {
			acked = append(acked, tok)
			full = 0
		} else {
			full++
		}
	}
	t.Logf("replies on the filling disk: %v", replies)
	if replies["250"] == 0 {
		t.Fatalf("nothing accepted before the disk filled: %v", replies)
	}
	for r := range replies {
		if r != "250" && r != "MAIL 452 4.3.1" && r != "DATA 452 4.3.1" {
			t.Errorf("unexpected reply %q on a full disk", r)
		}
	}
	if replies["MAIL 452 4.3.1"]+replies["DATA 452 4.3.1"] == 0 {
		t.Fatalf("no 452 4.3.1 although free space fell below the reserve: %v", replies)
	}
	if !alive(pid) {
		t.Fatalf("the daemon died on the full disk:\n%s", tailLines(n.log(), 30))
	}

	// A restart on the full disk works, and still refuses with 452.
	n.stop()
	fillTo(t, mnt, reserve-4<<20)
	n.start()
	if r, err := sendReply(addr, "tok-98-999999-0000000000000000", 1024); err != nil || r != "MAIL 452 4.3.1" {
		t.Fatalf("after a restart on the full disk: %q, %v; want MAIL 452 4.3.1", r, err)
	}

	// Space returns: mail is accepted again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	tok := fmt.Sprintf("tok-98-%06d-%016x", 500000, time.Now().UnixNano())
	if r, err := sendReply(addr, tok, 1024); err != nil || r != "250" {
		t.Fatalf("after space returned: %q, %v; want 250", r, err)
	}
	acked = append(acked, tok)
	got := waitTokens(t, sink, acked, 60*time.Second)
	for _, tok := range acked {
		if got[tok] != 1 {
			t.Errorf("message %s delivered %d times, want once", tok, got[tok])
		}
	}
	for _, bad := range []string{"SIGBUS", "panic:", "fatal error"} {
		if strings.Contains(n.log(), bad) {
			t.Fatalf("the log shows %q:\n%s", bad, tailLines(n.log(), 40))
		}
	}
	t.Logf("%d messages acknowledged, all delivered once", len(acked))
}

// TestDiskFullConcurrentStreamsGet452NoCrash: free space is just above
// the reserve when 12 sessions, each declaring no SIZE (so MAIL passes),
// stream 8 MiB bodies at once: together far more than the space left.
// Streaming stops at the reserve: each session ends with 250 or 452
// 4.3.1, the daemon never crashes, and every 250'd message is delivered
// once space returns.
func TestDiskFullConcurrentStreamsGet452NoCrash(t *testing.T) {
	sink := peers.SmtpSink(t)
	mnt := smallTmpfs(t, 200)
	const reserve = 64 << 20
	addr := freeAddr(t)
	data := filepath.Join(mnt, "data")
	cfg, _ := profile(t, fmt.Sprintf(`hostname: mixmta.invalid
log:
  level: info
queue:
  free_space_reserve: %d
listeners:
  - name: in
    address: %s
    max_message_bytes: 33554432
    relay:
      networks: [127.0.0.1/32]
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`, reserve, addr, sink.Addr), map[string]any{"data_dir": data})
	n := startNode(t, cfg, data, addr)
	pid := n.pid()
	filler := fillTo(t, mnt, reserve+8<<20)

	type result struct {
		tok, reply string
		err        error
	}
	results := make(chan result, 12)
	for i := 0; i < 12; i++ {
		go func() {
			tok := fmt.Sprintf("tok-97-%06d-%016x", i, time.Now().UnixNano())
			r, err := sendReply(addr, tok, 8<<20)
			results <- result{tok, r, err}
		}()
	}
	replies := map[string]int{}
	var acked []string
	for i := 0; i < 12; i++ {
		r := <-results
		if r.err != nil {
			t.Errorf("session %s: %v (daemon alive: %v)", r.tok, r.err, alive(pid))
			continue
		}
		replies[r.reply]++
		if r.reply == "250" {
			acked = append(acked, r.tok)
		}
	}
	t.Logf("replies to 12 concurrent 8 MiB streams: %v", replies)
	if !alive(pid) {
		t.Fatalf("the daemon died:\n%s", tailLines(n.log(), 30))
	}
	for r := range replies {
		if r != "250" && r != "DATA 452 4.3.1" && r != "MAIL 452 4.3.1" {
			t.Errorf("unexpected reply %q", r)
		}
	}
	if replies["DATA 452 4.3.1"]+replies["MAIL 452 4.3.1"] == 0 {
		t.Errorf("no 452 4.3.1 although 96 MiB were streamed into 8 MiB above the reserve: %v", replies)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	got := waitTokens(t, sink, acked, 90*time.Second)
	for _, tok := range acked {
		if got[tok] != 1 {
			t.Errorf("message %s delivered %d times, want once", tok, got[tok])
		}
	}
	for _, bad := range []string{"SIGBUS", "panic:", "fatal error"} {
		if strings.Contains(n.log(), bad) {
			t.Fatalf("the log shows %q:\n%s", bad, tailLines(n.log(), 40))
		}
	}
}
