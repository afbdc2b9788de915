package queue

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// badger writes and reads its value log through shared memory mappings
// (there is no option to do otherwise in v4), so every page of a body the
// core writes or reads stays mapped into the process, and the core's RSS
// grows with the bytes it has moved (20 sessions of 24 MiB: 500 MiB of
// RssFile) although the pages are page cache the kernel could drop. The
// trimmer tells the kernel the queue no longer needs those pages
// (madvise MADV_PAGEOUT on the value-log mappings, Linux 5.4+): dirty pages
// are written back, the pages leave the process, and a later access reads
// them again. RSS then reflects the working set: the chunks being moved
// right now. MADV_PAGEOUT never loses data, so a mapping that changed
// between reading /proc/self/maps and the call (badger remaps a value-log
// file when it rotates) is harmless: at worst some other memory is paged
// out (anonymous memory only with swap).

// trimEvery is how many body bytes the queue streams (BodyWriter,
// BlobReader) between trims (16 MiB); a trim also runs once a second while
// anything moved. Small values (item records, fragments, and packets on a
// queue that does not keep them in a slot file) do not count: they are
// read back soon after they are written, and paging them out at once
// would only make those reads go to the disk; the periodic trim
// (trimAllEvery) pages them out once they are stale. A mix node's packets
// are in its slot file (slots.go), written and read with pwrite and pread:
// never mapped, they never count in the process's memory.
const trimEvery = 16 << 20

// trimAllEvery is how often the trimmer pages out the value log whatever
// the byte count says (3 s). Small values are not counted, yet on a mix
// node they are nearly everything the queue writes (packets, fragments,
// their items): without this, every packet written since start stays
// mapped until its value-log file is deleted, 45 to 60 MiB of an idle mix
// node's RSS (measured on the 5-node loopback mixnet; 22 to 25 MiB with a
// trim every 10 s). A packet lives in the queue for its hop delay (300 ms
// on average in local-mixnet.yaml, 30 s in fog.yaml); one paged out
// before it leaves costs one read from the disk when it is forwarded:
// at fog's packet rates a few reads a second, against holding every
// packet of the last value-log file in memory.
var trimAllEvery = 3 * time.Second

type trimmer struct {
	dir   string
	moved atomic.Int64 // bytes since the last trim
	every time.Duration
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
}

func newTrimmer(dir string) *trimmer {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	t := &trimmer{dir: abs, every: trimAllEvery, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go t.loop()
	return t
}

// note records n bytes written to or read from the value log.
func (t *trimmer) note(n int) {
	if t.moved.Add(int64(n)) >= trimEvery {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}

func (t *trimmer) loop() {
	defer close(t.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	all := time.NewTicker(t.every)
	defer all.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-t.kick:
		case <-all.C:
		case <-tick.C:
			if t.moved.Load() == 0 {
				continue
			}
		}
		t.moved.Store(0)
		t.trim()
	}
}

// trim releases this process's mappings of the queue's value-log files.
func (t *trimmer) trim() {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "start-end perms offset dev inode path"
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || !strings.HasSuffix(fs[5], ".vlog") || filepath.Dir(fs[5]) != t.dir {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_PAGEOUT)
	}
}

func (t *trimmer) close() {
	close(t.stop)
	<-t.done
}
