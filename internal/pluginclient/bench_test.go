package pluginclient_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// inProcess is the echo plugin's Deliver logic called directly: the
// baseline the RPC cost is measured against.
type inProcess struct{}

func (inProcess) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	out := make([]sdk.RcptResult, 0, len(m.Envelope.RcptTo))
	for _, r := range m.Envelope.RcptTo {
		out = append(out, sdk.RcptResult{Rcpt: r})
	}
	return out, nil
}

// BenchmarkStageCall measures the cost of one stage call through the real
// plugin host (go-plugin, gRPC over a Unix socket, framing) against calling
// the same logic in process: headers only (a sanitizer's view of a 1 KiB
// message) and a full 64 KiB message (a deliverer's view).
//
//	go test -run '^$' -bench StageCall -benchmem ./internal/pluginclient/
func BenchmarkStageCall(b *testing.B) {
	header := []byte("From: a@example.org\r\nTo: ok@example.net\r\nSubject: bench\r\n\r\n")
	cases := []struct {
		name string
		msg  *sdk.Message
	}{
		{"headers-1KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: append(header, bytes.Repeat([]byte("X-Pad: 0123456789\r\n"), 50)...)}},
		{"full-64KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: header, Body: bytes.Repeat([]byte("x"), 64<<10)}},
	}
	p := plugintest.Start(b, echoBin, "")
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name+"/rpc", func(b *testing.B) {
			b.SetBytes(int64(len(c.msg.Header) + len(c.msg.Body)))
			for i := 0; i < b.N; i++ {
				if _, err := p.Deliver(ctx, c.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/in-process", func(b *testing.B) {
			var d sdk.Deliverer = inProcess{}
			b.SetBytes(int64(len(c.msg.Header) + len(c.msg.Body)))
			for i := 0; i < b.N; i++ {
				// the in-process baseline still copies the message once, as a
				// stage that keeps it would have to
				m := *c.msg
				m.Body = append([]byte(nil), c.msg.Body...)
				if _, err := d.Deliver(ctx, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnaryDelayCall is a unary call (Delay) for comparison with the
// streamed message calls above.
func BenchmarkUnaryDelayCall(b *testing.B) {
	p := plugintest.Start(b, echoBin, "")
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		if _, err := p.Delay(ctx, sdk.DelayRequest{Count: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStageCallLoaded is the amortized cost per item of a stage call
// under load: 32 callers at once (the core's workers), each running
// Deliver calls back to back on one plugin process, headers only (1 KiB)
// and a full 64 KiB message, through the batched Calls stream and, side by
// side in the same run, with every call a framed call of its own (the
// protocol before batching). ns/op is wall time per item over all callers.
//
//	go test -run '^$' -bench StageCallLoaded -benchmem ./internal/pluginclient/
func BenchmarkStageCallLoaded(b *testing.B) {
	header := []byte("From: a@example.org\r\nTo: ok@example.net\r\nSubject: bench\r\n\r\n")
	cases := []struct {
		name string
		msg  *sdk.Message
	}{
		{"headers-1KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: append(header, bytes.Repeat([]byte("X-Pad: 0123456789\r\n"), 50)...)}},
		{"full-64KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: header, Body: bytes.Repeat([]byte("x"), 64<<10)}},
	}
	ctx := context.Background()
	for _, mode := range []struct {
		name    string
		noBatch bool
	}{{"batched", false}, {"framed", true}} {
		c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: echoBin, NoBatch: mode.noBatch})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Configure(ctx, "bench", nil); err != nil {
			c.Kill()
			b.Fatal(err)
		}
		for _, tc := range cases {
			b.Run(tc.name+"/"+mode.name, func(b *testing.B) {
				b.SetBytes(int64(len(tc.msg.Header) + len(tc.msg.Body)))
				b.SetParallelism(16) // 32 callers on 2 cores
				host0, plugin0 := cpuTime(os.Getpid()), cpuTime(c.Pid())
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						res, err := c.Deliver(ctx, tc.msg)
						if err != nil || len(res) != 1 || res[0].Err != nil {
							b.Errorf("deliver: %v %v", res, err)
							return
						}
					}
				})
				// CPU per item in each process: a figure the other test
				// runs on a shared machine do not inflate as they do wall
				// time.
				b.ReportMetric(float64((cpuTime(os.Getpid())-host0).Microseconds())/float64(b.N), "host-cpu-us/op")
				b.ReportMetric(float64((cpuTime(c.Pid())-plugin0).Microseconds())/float64(b.N), "plugin-cpu-us/op")
			})
		}
		c.Kill()
	}
}

// cpuTime is the user plus system CPU time process pid has used so far
// (/proc/PID/stat, proc(5)); 0 if it cannot be read.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are fields 14 and 15 (11 and 12 here).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}
