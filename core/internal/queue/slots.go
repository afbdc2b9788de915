package queue

import (
	"container/heap"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A mix node stores every packet it receives (64 KiB, one fixed size) and
// deletes it a hop delay later. Through badger, each packet was copied
// into the value log's write buffer, then into the value log's shared
// mapping (a page fault per page of a fresh file), and each group commit
// msynced the whole mapping of the value-log file; the value log then
// kept the dead packets until GC rewrote the file. Measured under the mix
// node benchmark, that was about half of the core's CPU time per packet.
//
// So blobs of the sizes a caller registered (StoreInSlots: the mixnet's
// packet size) live in a slot file instead: a file of fixed-size slots,
// one sealed value (see seal.go; the same header, owner and part 0) per
// slot, written with one pwrite from the buffer it was sealed into and
// made durable by one fdatasync per group commit, in parallel with
// badger's sync and the key file's. badger keeps only the blob's meta
// record, which names the slot; the slot file has no index of its own, so
// the meta record's commit is what makes a slot's content part of the
// queue, and a crash before that leaves a slot no meta names, which is
// free again at the next Open.
//
// A deleted blob's slot is crypto-shredded like any other value (its key
// is destroyed and zeroed on disk, see keyStore) and is not reused before
// the delete of its meta record is on disk: a crash can never bring back
// a meta record whose slot holds another blob. Slots are reused lowest
// first, and a long free tail is cut off the file at a sync (shrink), so
// the file is at most about twice as long as the backlog it holds.
//
// File name: slots-<content size in bytes>. Slot i holds a sealed value of
// size+SealOverhead bytes at offset i*span, span being that rounded up to
// a page (4096 bytes), so a slot never shares a page with another and a
// write of one never rewrites a page of its neighbour.
const slotFilePrefix = "slots-"

const slotPage = 4096

// Slot states.
const (
	slotFree uint8 = iota
	slotUsed
	slotDead // deleted, free once the delete is on disk
)

// slotStore is the queue's slot files, one per content size.
type slotStore struct {
	dir   string
	mu    sync.Mutex
	files map[int64]*slotFile
	sizes map[int64]bool // content sizes new blobs are written to slots for
	// writes counts the blobs written to slots since Open (SlotWrites).
	writes atomic.Int64
}

type slotFile struct {
	size  int64 // content bytes of each blob
	span  int64 // bytes per slot
	path  string
	f     *os.File
	state []uint8 // slot -> slotFree, slotUsed, slotDead
	free  slotHeap
	dead  []int64
	dirty bool // written since the last fdatasync
}

// slotRef names one slot.
type slotRef struct {
	size, slot int64
}

func sealedLen(size int64) int64 { return size + SealOverhead }

func slotSpan(size int64) int64 { return (sealedLen(size) + slotPage - 1) / slotPage * slotPage }

// openSlots opens every slot file in dir. All their slots count as free
// until the sweep marks those that meta records name (markUsed) and calls
// opened.
func openSlots(dir string) (*slotStore, error) {
	s := &slotStore{dir: dir, files: map[int64]*slotFile{}, sizes: map[int64]bool{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for _, e := range ents {
		size, err := strconv.ParseInt(strings.TrimPrefix(e.Name(), slotFilePrefix), 10, 64)
		if !strings.HasPrefix(e.Name(), slotFilePrefix) || err != nil || size <= 0 || !e.Type().IsRegular() {
			continue
		}
		sf, err := s.file(size)
		if err != nil {
			s.close()
			return nil, err
		}
		st, err := sf.f.Stat()
		if err != nil {
			s.close()
			return nil, fmt.Errorf("queue: slot file: %w", err)
		}
		sf.state = make([]uint8, (st.Size()+sf.span-1)/sf.span) // the last slot's padding is not written
	}
	return s, nil
}

// file returns the slot file for content size, opening or creating it
// (mode 0600). Called with s.mu held or before the store is shared.
func (s *slotStore) file(size int64) (*slotFile, error) {
	if sf := s.files[size]; sf != nil {
		return sf, nil
	}
	p := filepath.Join(s.dir, slotFilePrefix+strconv.FormatInt(size, 10))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: slot file: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("queue: slot file: %w", err)
	}
	sf := &slotFile{size: size, span: slotSpan(size), path: p, f: f}
	s.files[size] = sf
	return sf, nil
}

// markUsed claims a slot a meta record names, at Open. false: the slot is
// beyond the file or claimed twice (the record is broken).
func (s *slotStore) markUsed(r slotRef) bool {
	sf := s.files[r.size]
	if sf == nil || r.slot < 0 || r.slot >= int64(len(sf.state)) || sf.state[r.slot] != slotFree {
		return false
	}
	sf.state[r.slot] = slotUsed
	return true
}

// holds reports whether slot r holds a sealed value of blob id (its
// header: magic, owner, part 0, length), at Open.
func (s *slotStore) holds(r slotRef, id ID) bool {
	sf := s.files[r.size]
	if sf == nil || r.slot < 0 || r.slot >= int64(len(sf.state)) {
		return false
	}
	var h [sealAADLen]byte
	if _, err := sf.f.ReadAt(h[:], r.slot*sf.span); err != nil {
		return false
	}
	owner, part, n, ok := sealHeader(append(h[:], make([]byte, sealNonceLen+sealTagLen)...))
	return ok && owner == id && part == 0 && int64(n) == r.size+sealTagLen
}

// opened ends Open: every slot no meta record claimed is free, the free
// tail of each file is cut off and a file without a used slot removed.
func (s *slotStore) opened() error {
	for size, sf := range s.files {
		if err := sf.shrink(true); err != nil {
			return err
		}
		if len(sf.state) == 0 {
			sf.f.Close()
			delete(s.files, size)
			if err := os.Remove(sf.path); err != nil {
				return fmt.Errorf("queue: slot file: %w", err)
			}
			continue
		}
		for i, st := range sf.state {
			if st == slotFree {
				heap.Push(&sf.free, int64(i))
			}
		}
	}
	return nil
}

// enable makes blobs of exactly size bytes go to a slot file from now on.
func (s *slotStore) enable(size int64) {
	s.mu.Lock()
	s.sizes[size] = true
	s.mu.Unlock()
}

// writable reports whether a blob of size bytes goes to a slot file.
func (s *slotStore) writable(size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sizes[size]
}

// put seals data (its whole content, part 0) under key for blob id into a
// new slot and writes it (page cache; durable at the next sync). The
// caller commits a meta record naming the slot, or releases the slot.
func (s *slotStore) put(key []byte, id ID, data []byte) (slotRef, error) {
	size := int64(len(data))
	s.mu.Lock()
	sf, err := s.file(size)
	if err != nil {
		s.mu.Unlock()
		return slotRef{}, err
	}
	slot := sf.alloc()
	s.mu.Unlock()
	r := slotRef{size: size, slot: slot}
	buf := slotBufs.Get().(*[]byte)
	defer slotBufs.Put(buf)
	*buf = sealAppend((*buf)[:0], key, id, 0, data)
	if _, err := sf.f.WriteAt(*buf, slot*sf.span); err != nil {
		s.release([]slotRef{r})
		return slotRef{}, fmt.Errorf("queue: slot file: %w", err)
	}
	s.mu.Lock()
	sf.dirty = true
	s.mu.Unlock()
	s.writes.Add(1)
	return r, nil
}

// slotBufs holds the buffers packets are sealed into before their pwrite.
var slotBufs = sync.Pool{New: func() any { b := []byte(nil); return &b }}

// alloc returns the lowest free slot, growing the file by one if there is
// none. Called with s.mu held.
func (sf *slotFile) alloc() int64 {
	for sf.free.Len() > 0 {
		i := heap.Pop(&sf.free).(int64)
		if i < int64(len(sf.state)) && sf.state[i] == slotFree { // defensive: the heap lists only free slots
			sf.state[i] = slotUsed
			return i
		}
	}
	sf.state = append(sf.state, slotUsed)
	return int64(len(sf.state) - 1)
}

// read returns the content of blob id in slot r, opened with key.
// Errors: ErrNotFound when the slot no longer holds the blob (deleted
// meanwhile and reused), a read error.
func (s *slotStore) read(r slotRef, key []byte, id ID, dst []byte) ([]byte, error) {
	s.mu.Lock()
	sf := s.files[r.size]
	s.mu.Unlock()
	if sf == nil {
		return dst, fmt.Errorf("queue: blob %s: no slot file for %d bytes", id, r.size)
	}
	n := sealedLen(r.size)
	buf := slotBufs.Get().(*[]byte)
	defer slotBufs.Put(buf)
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := sf.f.ReadAt(b, r.slot*sf.span); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return dst, ErrNotFound // deleted meanwhile, and the free tail cut off
	} else if err != nil {
		return dst, fmt.Errorf("queue: blob %s: slot %d: %w", id, r.slot, err)
	}
	out, err := unsealAppend(dst, key, id, 0, b)
	if errors.Is(err, errSealed) {
		return dst, ErrNotFound
	}
	return out, err
}

// release frees slots whose blobs were never committed (at once: no
// record names them).
func (s *slotStore) release(rs []slotRef) {
	if len(rs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		if sf := s.files[r.size]; sf != nil && r.slot < int64(len(sf.state)) {
			sf.state[r.slot] = slotFree
			heap.Push(&sf.free, r.slot)
		}
	}
}

// kill marks the slots of committed deletes dead: free after the sync that
// puts the deletes on disk (takeDead, then freeDead).
func (s *slotStore) kill(rs []slotRef) {
	if len(rs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		if sf := s.files[r.size]; sf != nil && r.slot < int64(len(sf.state)) && sf.state[r.slot] == slotUsed {
			sf.state[r.slot] = slotDead
			sf.dead = append(sf.dead, r.slot)
		}
	}
}

// takeDead returns the slots killed so far, for the caller to free once
// badger has synced.
func (s *slotStore) takeDead() []slotRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []slotRef
	for size, sf := range s.files {
		for _, i := range sf.dead {
			out = append(out, slotRef{size: size, slot: i})
		}
		sf.dead = sf.dead[:0]
	}
	return out
}

// requeue gives back dead slots a failed sync could not free.
func (s *slotStore) requeue(rs []slotRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		if sf := s.files[r.size]; sf != nil {
			sf.dead = append(sf.dead, r.slot)
		}
	}
}

// freeDead frees dead slots whose deletes are on disk and cuts the free
// tail off each file.
func (s *slotStore) freeDead(rs []slotRef) error {
	if len(rs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		if sf := s.files[r.size]; sf != nil && r.slot < int64(len(sf.state)) && sf.state[r.slot] == slotDead {
			sf.state[r.slot] = slotFree
			heap.Push(&sf.free, r.slot)
		}
	}
	var err error
	for _, sf := range s.files {
		if e := sf.shrink(false); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// minFreeTail is the fewest free slots at the end of a slot file that a
// sync cuts off (unless no slot is used).
const minFreeTail = 64

// shrink cuts the free slots off the end of the file: all of them (all,
// at Open), else once they are at least minFreeTail and as many as the
// slots before them, or when no slot is used. A file cut back by every
// sync and grown again by the next packets would free and allocate its
// disk blocks each time (journal commits, and an fdatasync that writes
// metadata), where a reused slot costs only its data. Called with s.mu
// held (or before the store is shared). A slot being written (put
// between alloc and WriteAt) is used, so it is never cut.
func (sf *slotFile) shrink(all bool) error {
	n := len(sf.state)
	for n > 0 && sf.state[n-1] == slotFree {
		n--
	}
	tail := len(sf.state) - n
	if tail == 0 || !all && n > 0 && (tail < minFreeTail || tail < n) {
		return nil
	}
	sf.state = sf.state[:n]
	kept := sf.free[:0]
	for _, i := range sf.free {
		if i < int64(n) {
			kept = append(kept, i)
		}
	}
	sf.free = kept
	heap.Init(&sf.free)
	if err := sf.f.Truncate(int64(n) * sf.span); err != nil {
		return fmt.Errorf("queue: slot file: %w", err)
	}
	return nil
}

// sync makes every slot written so far durable (fdatasync: the data, and
// the file size when it grew).
func (s *slotStore) sync() error {
	s.mu.Lock()
	var files []*slotFile
	for _, sf := range s.files {
		if sf.dirty {
			sf.dirty = false
			files = append(files, sf)
		}
	}
	s.mu.Unlock()
	for i, sf := range files {
		if err := unix.Fdatasync(int(sf.f.Fd())); err != nil {
			s.mu.Lock()
			for _, sf := range files[i:] {
				sf.dirty = true
			}
			s.mu.Unlock()
			return fmt.Errorf("queue: slot file sync: %w", err)
		}
	}
	return nil
}

func (s *slotStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sf := range s.files {
		sf.f.Close()
	}
}

// slotHeap is a min-heap of slot numbers: the lowest free slot is reused
// first, so the used slots gather at the start of the file.
type slotHeap []int64

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *slotHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
