package queue

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
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

// BenchmarkPacketStore is a mix node's packet life in the queue under
// load, store only: 32 receivers each store a 64 KiB packet and wait for
// its sync (the ack), hand it over to its forward item with a replay tag
// and sync again, read it back and delete it. Side by side: the packets in
// badger's value log (as before slot files) and in a slot file. Metrics:
// packets/s and the process's CPU time per packet (user + system).
//
//	go test -run '^$' -bench PacketStore -benchtime 4000x ./core/internal/queue/
func BenchmarkPacketStore(b *testing.B) {
	for _, slots := range []bool{false, true} {
		name := "value-log"
		if slots {
			name = "slots"
		}
		b.Run(name, func(b *testing.B) {
			q, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			if slots {
				if err := q.StoreInSlots(64 << 10); err != nil {
					b.Fatal(err)
				}
			}
			packet := make([]byte, 64<<10)
			var next atomic.Int64
			var wg sync.WaitGroup
			cpu0 := cpuTime()
			b.ResetTimer()
			start := time.Now()
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := packetLife(q, packet); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "packets/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/pkt")
		})
	}
}

func packetLife(q *Queue, packet []byte) error {
	in := &Item{ID: NewID(), Msg: NewID(), Kind: KindPacketIn, Received: time.Now(), Deliverer: -1}
	if err := q.Do(func(tx *Tx) error { return tx.Put(in, packet) }); err != nil {
		return err
	}
	if err := q.Sync(); err != nil {
		return err
	}
	out := &Item{ID: NewID(), Msg: NewID(), Kind: KindPacketOut, Received: in.Received, Deliverer: -1, AsReceived: true}
	tag := NewID()
	if err := q.Do(func(tx *Tx) error {
		if _, err := tx.Mark(tag[:], time.Minute); err != nil {
			return err
		}
		return tx.Handover(in, out)
	}); err != nil {
		return err
	}
	if err := q.Sync(); err != nil {
		return err
	}
	if _, err := q.Blob(out.Body); err != nil {
		return err
	}
	return q.Delete(out)
}

// cpuTime is this process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
