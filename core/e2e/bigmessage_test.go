package e2e

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// procMem is one process's memory from /proc/PID/status, in KiB: VmRSS and
// its anonymous and file-backed parts.
type procMem struct{ rss, anon, file int }

func readProcMem(pid int) procMem {
	var m procMem
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.Atoi(fs[1])
		switch fs[0] {
		case "VmRSS:":
			m.rss = v
		case "RssAnon:":
			m.anon = v
		case "RssFile:":
			m.file = v
		}
	}
	return m
}

// memPeaks samples the core's and its plugins' memory every 20 ms until
// stop is closed and returns the peaks (KiB).
type memPeaks struct {
	core, coreAnon, coreFile, plugins, total int
	samples                                  int
}

func sampleMemory(pid int, stop <-chan struct{}) <-chan memPeaks {
	out := make(chan memPeaks, 1)
	go func() {
		var p memPeaks
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			c := readProcMem(pid)
			plugins := 0
			for _, k := range children(pid) {
				plugins += readProcMem(k).rss
			}
			p.core, p.coreAnon, p.coreFile = max(p.core, c.rss), max(p.coreAnon, c.anon), max(p.coreFile, c.file)
			p.plugins, p.total = max(p.plugins, plugins), max(p.total, c.rss+plugins)
			p.samples++
			select {
			case <-stop:
				out <- p
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// sendBig sends one message of about size bytes over a fresh session,
// generating the body as it goes (the test holds none of it).
func sendBig(addr, tok string, size int) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	if err := c.Mail("big@example.org", nil); err != nil {
		return err
	}
	if err := c.Rcpt("sink@example.net", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, "Subject: big %s\r\nTo: sink@example.net\r\n\r\n%s\r\n", tok, tok)
	line := strings.Repeat("0123456789", 7) + "abcdefgh\r\n"
	for n := 0; n < size; n += len(line) {
		bw.WriteString(line)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// TestBigMessagesInBoundedMemory: 20 sessions send a 24 MiB message each
// at the same time into configs/relay.yaml, which delivers them with
// onionmx to a real smtp-sink. RSS sampled from /proc every 20 ms stays at
// most 256 MiB for the core and 768 MiB for the core and its plugins
// together, and all 20 messages arrive whole. (Before bodies were
// streamed, the core alone grew past 1.5 GiB on this load.)
func TestBigMessagesInBoundedMemory(t *testing.T) {
	const (
		sessions = 20
		size     = 24 << 20
		coreMax  = 256 << 10 // KiB
		totalMax = 768 << 10
	)
	sink := peers.SmtpSink(t)
	n := relayNode(t, sink.Addr, map[string]any{
		"pipeline.delay.config.mean":    "1ms",
		"pipeline.delay.config.max":     "10ms",
		"scheduler.window":              "50ms",
		"listeners.0.max_message_bytes": size + (1 << 20),
	})
	stop := make(chan struct{})
	peaks := sampleMemory(n.pid(), stop)

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sendBig(n.addr, fmt.Sprintf("big-%02d-%s", i, token()), size); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("send: %v", err)
	}
	accepted := time.Since(start)
	// smtp-sink stores each message with LF line ends: 79 of every 80
	// bytes of the body.
	want := int64(size / 80 * 79)
	complete := func() int {
		ents, _ := os.ReadDir(sink.DumpDir)
		n := 0
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Size() > want {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Minute)
	for complete() < sessions && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	p := <-peaks
	t.Logf("%d x %d MiB: accepted in %v, delivered after %v; peak RSS core %d MiB (anon %d, file %d), plugins %d MiB, core+plugins %d MiB (%d samples)",
		sessions, size>>20, accepted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond),
		p.core>>10, p.coreAnon>>10, p.coreFile>>10, p.plugins>>10, p.total>>10, p.samples)
	if got := complete(); got != sessions {
		t.Fatalf("smtp-sink holds %d whole messages of more than %d bytes, want %d", got, want, sessions)
	}
	if p.core > coreMax {
		t.Errorf("core RSS peaked at %d MiB, want <= %d MiB", p.core>>10, coreMax>>10)
	}
	if p.total > totalMax {
		t.Errorf("core+plugins RSS peaked at %d MiB, want <= %d MiB", p.total>>10, totalMax>>10)
	}
}
