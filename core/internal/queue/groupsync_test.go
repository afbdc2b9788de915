package queue

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func acceptOne(q *Queue, i int) error {
	env := sdk.Envelope{MailFrom: "a@example.org", RcptTo: []string{"b@example.net"}}
	_, err := q.Accept(env, []byte("Subject: x\r\n\r\n"), []byte(fmt.Sprintf("body %d\r\n", i)), time.Now())
	return err
}

// A commit that arrives while a sync is under way starts its own sync at
// once (pipelined group commit) instead of waiting for the running one to
// end, and each Accept still returns only after a sync that started after
// its commit has finished.
func TestGroupCommitPipelinesSyncs(t *testing.T) {
	q := open(t, t.TempDir())
	defer q.Close()
	real := q.syncer.dbSync
	gate := make(chan struct{})
	entered := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	q.syncer.dbSync = func() error {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			close(entered)
			<-gate // the first sync hangs like a slow disk
		}
		return real()
	}
	aDone := make(chan error, 1)
	go func() { aDone <- acceptOne(q, 0) }()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the first accept started no sync")
	}
	bDone := make(chan error, 1)
	go func() { bDone <- acceptOne(q, 1) }()
	select {
	case err := <-bDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		close(gate)
		t.Fatal("an accept waited for a sync that started before its commit: syncs are not pipelined")
	}
	select {
	case <-aDone:
		t.Fatal("an accept returned before the only sync covering it finished")
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
}

// Concurrent accepts share syncs: 40 sessions committing at once while the
// disk is slow cause far fewer than 40 syncs.
func TestConcurrentAcceptsShareSyncs(t *testing.T) {
	q := open(t, t.TempDir())
	defer q.Close()
	real := q.syncer.dbSync
	q.syncer.dbSync = func() error {
		time.Sleep(20 * time.Millisecond)
		return real()
	}
	const n = 40
	before := q.syncer.syncs.Load()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- acceptOne(q, i) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := q.syncer.syncs.Load() - before
	t.Logf("%d accepts, %d syncs", n, got)
	if got >= n/2 {
		t.Fatalf("%d concurrent accepts caused %d syncs: commits do not share syncs", n, got)
	}
}
