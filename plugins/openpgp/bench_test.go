package main

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// BenchmarkEncrypt measures the cost of one recipient's PGP/MIME copy in
// the stage (key lookup, session key wrap, AES, armor, MIME), without the
// plugin RPC, at 1 KiB and 64 KiB, for a Curve25519 key (what GnuPG's
// future-default makes) and an RSA 3072 key. Run:
//
//	go test -run '^$' -bench Encrypt -benchmem ./plugins/openpgp/
func BenchmarkEncrypt(b *testing.B) {
	for _, k := range []struct {
		name string
		cfg  *packet.Config
	}{
		{"cv25519", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}},
		{"rsa3072", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 3072}},
	} {
		keys := b.TempDir()
		goKey(b, keys, "bob@example.net", k.cfg)
		s := newTestStage(b, keys, policyReject, true)
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%dKiB", k.name, size>>10), func(b *testing.B) {
				m := loadMessage(b, "multipart.eml", "bob@example.net")
				line := []byte("The quick brown fox jumps over the lazy dog, again and again.\r\n")
				m.Body = bytes.Repeat(line, (size-len(m.Header))/len(line)+1)[:size-len(m.Header)]
				b.SetBytes(int64(size))
				b.ReportAllocs()
				cpu := cpuTime()
				for b.Loop() {
					if _, err := s.Route(context.Background(), m); err != nil {
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
