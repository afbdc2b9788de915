package smtpd

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkDataThroughput: one 8 MiB message of 78-byte lines per
// iteration through a real listener over loopback, in plaintext and
// inside STARTTLS (bytes/s in the MB/s column).
func BenchmarkDataThroughput(b *testing.B) {
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", 8<<20/78)
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) {
			s, sink := startServer(b, withTLS(b, testListener(nil)))
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sink.reset()
				c := open(b, s, mode)
				c.expect("MAIL FROM:<a@example.org>", "250")
				c.expect("RCPT TO:<b@example.net>", "250")
				c.expect("DATA", "354")
				fmt.Fprint(c.c, "Subject: bench\r\n\r\n"+body+".\r\n")
				c.expect("", "250")
				c.c.Close()
			}
		})
	}
}
