package main

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
)

// BenchmarkSign measures the signing cost of one message in the stage
// (body hash, header hash, one signature), without the plugin RPC, for
// both algorithms at 1 KiB and 64 KiB. Run:
//
//	go test -run '^$' -bench Sign -benchmem ./plugins/dkim/
func BenchmarkSign(b *testing.B) {
	for _, algo := range []string{"ed25519", "rsa"} {
		keyFile, _ := opensslKey(b, algo)
		s := newTestSigner(b, keyFile)
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%dKiB", algo, size>>10), func(b *testing.B) {
				m := loadMessage(b)
				line := []byte("The quick brown fox jumps over the lazy dog, again and again.\r\n")
				m.Body = bytes.Repeat(line, (size-len(m.Header))/len(line)+1)[:size-len(m.Header)]
				b.SetBytes(int64(size))
				b.ReportAllocs()
				cpu := cpuTime()
				for b.Loop() {
					if _, err := s.Transform(context.Background(), m); err != nil {
						b.Fatal(err)
					}
				}
				// CPU time (process, GC included) is what the machine
				// pays; wall time also counts waiting on a busy machine.
				b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e3, "cpu-us/op")
			})
		}
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
