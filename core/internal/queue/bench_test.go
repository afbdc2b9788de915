package queue

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// BenchmarkSeal is the cost of sealing and opening one stored value: an
// item record (~300 B), a Sphinx packet (64 KiB) and a full body chunk.
func BenchmarkSeal(b *testing.B) {
	key := make([]byte, keyLen)
	owner := NewID()
	for _, size := range []int{300, 64 << 10, ChunkSize} {
		plain := make([]byte, size)
		b.Run(fmt.Sprintf("seal-%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				seal(key, owner, 0, plain)
			}
		})
		sealed := seal(key, owner, 0, plain)
		b.Run(fmt.Sprintf("open-%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				if _, err := unseal(key, owner, 0, sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkItemLife is one packet's life in the queue as a mix node lives
// it (put, read, delete), key slot allocation and destruction included.
func BenchmarkItemLife(b *testing.B) {
	q, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	packet := make([]byte, 64<<10)
	b.SetBytes(int64(len(packet)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		it := &Item{ID: NewID(), Msg: NewID(), Kind: KindPacketIn, Received: time.Now(), Deliverer: -1, Envelope: sdk.Envelope{}}
		if err := q.Do(func(tx *Tx) error { return tx.Put(it, packet) }); err != nil {
			b.Fatal(err)
		}
		if _, err := q.Blob(it.Body); err != nil {
			b.Fatal(err)
		}
		if err := q.Delete(it); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcceptBody is a received message's way into the queue as
// smtpd takes it (body streamed in 64 KiB writes, accepted and synced,
// later deleted), at 1 KiB and 64 KiB.
func BenchmarkAcceptBody(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			q, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			header := []byte("Subject: bench\r\n\r\n")
			body := bytes.Repeat([]byte("x"), size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w, err := q.NewBody()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write(body); err != nil {
					b.Fatal(err)
				}
				it, err := q.AcceptBody(sdk.Envelope{MailFrom: "a@example.org", RcptTo: []string{"b@example.net"}}, header, w, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				if err := q.Delete(it); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
