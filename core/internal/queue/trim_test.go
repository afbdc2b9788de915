package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// vlogRSS is how much of this process's mappings of the value-log files in
// dir is resident (KiB, from /proc/self/smaps).
func vlogRSS(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kib, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		switch {
		case len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":"):
			in = len(fs) >= 6 && strings.HasPrefix(fs[5], dir) && strings.HasSuffix(fs[5], ".vlog")
		case in && fs[0] == "Rss:":
			v, _ := strconv.Atoi(fs[1])
			kib += v
		}
	}
	return kib
}

// fillSmallValues accepts 256 messages of 60 KiB from 16 sessions: each
// value goes to the value log, none through a BodyWriter, so the byte
// count that triggers a trim never sees them (as a mix node's packets).
func fillSmallValues(t *testing.T, q *Queue) {
	t.Helper()
	body := bytes.Repeat([]byte("packet bytes "), 60<<10/13)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 16; i++ {
				if _, err := q.Accept(sdk.Envelope{RcptTo: []string{"x@example.net"}}, []byte("S: 1\r\n\r\n"), body, time.Now()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestValueLogPagedOutWhenOnlySmallValuesMoved: values written without a
// BodyWriter (a mix node's packets) leave the process's resident memory
// within the periodic trim, while with the periodic trim off (the negative
// control: the queue as it was) 15 MiB of them stay mapped.
func TestValueLogPagedOutWhenOnlySmallValuesMoved(t *testing.T) {
	defer func(d time.Duration) { trimAllEvery = d }(trimAllEvery)
	for _, c := range []struct {
		every    time.Duration
		resident bool
	}{{time.Hour, true}, {200 * time.Millisecond, false}} {
		t.Run(fmt.Sprint(c.every), func(t *testing.T) {
			trimAllEvery = c.every
			dir := t.TempDir()
			q := open(t, dir)
			defer q.Close()
			fillSmallValues(t, q)
			if c.resident {
				if kib := vlogRSS(t, dir); kib < 8<<10 {
					t.Fatalf("control: %d KiB of the value log resident after 15 MiB of small values; want them mapped (is the test measuring the mapping?)", kib)
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for vlogRSS(t, dir) > 1<<10 {
				if time.Now().After(deadline) {
					t.Fatalf("%d KiB of the value log still resident 10 s after the writes; want it paged out (<= 1 MiB)", vlogRSS(t, dir))
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}
