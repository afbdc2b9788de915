package main

import (
	"context"
	"testing"

	"github.com/mixmta/mixmta/internal/peers"
)

// BenchmarkDeliverToSmtpSink measures one sequential delivery of a small
// message to smtp-sink, with connection reuse and without.
//
//	go test -run '^$' -bench DeliverToSmtpSink ./plugins/onionmx/
func BenchmarkDeliverToSmtpSink(b *testing.B) {
	benchDeliver(b, tlsNone, func(b *testing.B) string { return peers.SmtpSink(b).Addr })
}

// BenchmarkDeliverToPostfixTLS is the same against a temp-dir Postfix with
// tls: require (fsync'd queue, Maildir delivery behind it).
//
//	go test -run '^$' -bench DeliverToPostfixTLS ./plugins/onionmx/
func BenchmarkDeliverToPostfixTLS(b *testing.B) {
	benchDeliver(b, tlsRequire, func(b *testing.B) string { return peers.Postfix(b).Addr })
}

// benchDeliver times sequential deliveries to the peer that start returns,
// with a reused connection and with a new connection per message.
func benchDeliver(b *testing.B, tls string, start func(*testing.B) string) {
	for _, c := range []struct {
		name    string
		maxIdle int
	}{{"reuse", 2}, {"new-connection", 0}} {
		b.Run(c.name, func(b *testing.B) {
			cfg := testConfig(start(b))
			cfg.TLS = tls
			cfg.MaxIdle = c.maxIdle
			d, err := newDeliverer(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer d.pool.close()
			m := testMessage("s@example.org", "a@example.net")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := d.Deliver(context.Background(), m)
				if err != nil || res[0].Err != nil {
					b.Fatalf("%v %v", err, res)
				}
			}
		})
	}
}
