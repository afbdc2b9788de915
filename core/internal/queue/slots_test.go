package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// slotTestSize is the packet size of these tests (a small mix packet).
const slotTestSize = 8 << 10

// testPacket is a slotTestSize packet that holds token many times.
func testPacket(token string) []byte {
	return bytes.Repeat([]byte(token), slotTestSize/len(token)+1)[:slotTestSize]
}

// putPackets stores each packet as a KindPacketIn item, the way a mix
// node's Receive does, and syncs.
func putPackets(t *testing.T, q *Queue, packets ...[]byte) []*Item {
	t.Helper()
	var out []*Item
	err := q.Do(func(tx *Tx) error {
		out = out[:0]
		for _, p := range packets {
			it := &Item{ID: NewID(), Msg: NewID(), Kind: KindPacketIn, Received: time.Now(), Deliverer: -1}
			if err := tx.Put(it, p); err != nil {
				return err
			}
			out = append(out, it)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Sync(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sealedIn counts the sealed values of at least n content bytes in the raw
// bytes of the files under dir whose name ends with suffix.
func sealedIn(t *testing.T, dir, suffix string, n int) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; ; {
			i := bytes.Index(raw[off:], []byte(sealMagic))
			if i < 0 || off+i+sealAADLen > len(raw) {
				break
			}
			if int(binary.BigEndian.Uint32(raw[off+i+24:])) >= n+sealTagLen {
				count++
			}
			off += i + len(sealMagic)
		}
	}
	return count
}

// slotFileSize is the length of the slot file in slots (the last one's
// padding is not written), -1 if there is none.
func slotFileSize(t *testing.T, dir string) int64 {
	t.Helper()
	st, err := os.Stat(filepath.Join(dir, fmt.Sprintf("%s%d", slotFilePrefix, slotTestSize)))
	if os.IsNotExist(err) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return (st.Size() + slotSpan(slotTestSize) - 1) / slotSpan(slotTestSize)
}

// TestPacketsGoToSlotsNotTheValueLog: with the packet size registered,
// packets are written to the slot file, one page-aligned slot each, and
// none to badger's value log; they read back after a reopen. Without the
// registration (the negative control: the queue as it was) every packet
// is in the value log. The slot file is private (0600).
func TestPacketsGoToSlotsNotTheValueLog(t *testing.T) {
	for _, slots := range []bool{false, true} {
		t.Run(fmt.Sprint("slots=", slots), func(t *testing.T) {
			dir := t.TempDir()
			q := open(t, dir)
			if slots {
				if err := q.StoreInSlots(slotTestSize); err != nil {
					t.Fatal(err)
				}
			}
			var packets [][]byte
			for i := range 20 {
				packets = append(packets, testPacket(fmt.Sprintf("packet-%02d ", i)))
			}
			items := putPackets(t, q, packets...)
			vlog := sealedIn(t, dir, ".vlog", slotTestSize)
			if !slots {
				if vlog != len(packets) {
					t.Fatalf("control: %d packets in the value log, want %d", vlog, len(packets))
				}
				if slotFileSize(t, dir) != -1 {
					t.Fatal("control: a slot file without StoreInSlots")
				}
				q.Close()
				return
			}
			if vlog != 0 {
				t.Errorf("%d packets in the value log, want 0", vlog)
			}
			if n := sealedIn(t, dir, fmt.Sprint(slotTestSize), slotTestSize); n != len(packets) {
				t.Errorf("%d packets in the slot file, want %d", n, len(packets))
			}
			if st, err := os.Stat(filepath.Join(dir, fmt.Sprint(slotFilePrefix, slotTestSize))); err != nil {
				t.Error(err)
			} else if st.Mode().Perm() != 0o600 {
				t.Errorf("slot file mode %v, want 0600", st.Mode().Perm())
			}
			if got := slotFileSize(t, dir); got != int64(len(packets)) {
				t.Errorf("slot file of %d slots, want %d", got, len(packets))
			}
			q.Close()
			q = open(t, dir) // reads need no registration
			defer q.Close()
			for i, it := range items {
				b, err := q.Blob(it.Body)
				if err != nil || !bytes.Equal(b, packets[i]) {
					t.Fatalf("packet %d after reopen: %d bytes, %v", i, len(b), err)
				}
				r, err := q.BlobReader(it.Body)
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				if _, err := buf.ReadFrom(r); err != nil || !bytes.Equal(buf.Bytes(), packets[i]) {
					t.Fatalf("packet %d streamed after reopen: %d bytes, %v", i, buf.Len(), err)
				}
			}
		})
	}
}

// TestFreedSlotsForgetAndAreReused: packets go through the queue and are
// deleted while others stay. After the syncs that follow, no file holds a
// deleted packet's plaintext and, with every key slot on disk, none of
// their sealed values opens, although the slot file still holds them
// (they were not overwritten: forgetting is by the destroyed keys); the
// packets still queued open (the negative control). Freed slots are
// reused lowest first (the file does not grow), and the file shrinks to
// nothing once every packet has left.
func TestFreedSlotsForgetAndAreReused(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	defer q.Close()
	if err := q.StoreInSlots(slotTestSize); err != nil {
		t.Fatal(err)
	}
	var packets [][]byte
	for i := range 8 {
		packets = append(packets, testPacket(fmt.Sprintf("gone-%d ", i)))
	}
	packets = append(packets, testPacket("kept-8 "), testPacket("kept-9 "))
	items := putPackets(t, q, packets...)
	if r, err := Recover(dir); err != nil || !r.Contains([]byte("gone-3 ")) {
		t.Fatalf("control: a queued packet does not open from the raw files (%v)", err)
	}
	for _, it := range items[:8] {
		if err := q.Delete(it); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // the deletes, then the zeroed key slots, on disk
		if err := q.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Recover(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if tok := fmt.Sprintf("gone-%d ", i); r.Contains([]byte(tok)) {
			t.Errorf("deleted packet %q still opens", tok)
		}
	}
	if !r.Contains([]byte("kept-8 ")) || !r.Contains([]byte("kept-9 ")) {
		t.Error("control: a queued packet does not open")
	}
	if n := sealedIn(t, dir, fmt.Sprint(slotTestSize), slotTestSize); n != 10 {
		t.Errorf("%d sealed packets in the slot file, want the 10 written (deleted ones not overwritten yet)", n)
	}
	if f := plainText(t, dir, "gone-", "kept-"); len(f) > 0 {
		t.Errorf("packets in plain text: %v", f)
	}

	size := slotFileSize(t, dir)
	more := putPackets(t, q, testPacket("new-a "), testPacket("new-b "))
	if got := slotFileSize(t, dir); got != size {
		t.Errorf("slot file grew from %d to %d slots with 8 slots free", size, got)
	}
	for i, want := range []string{"new-a ", "new-b "} {
		if b, err := q.Blob(more[i].Body); err != nil || !bytes.HasPrefix(b, []byte(want)) {
			t.Fatalf("packet in a reused slot: %.10q, %v", b, err)
		}
	}
	for _, it := range append(items[8:], more...) {
		if err := q.Delete(it); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := q.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if got := slotFileSize(t, dir); got != 0 {
		t.Errorf("slot file of %d slots with no packet queued, want 0", got)
	}
}

// TestSlotsLostInACrashAreSwept: what a power loss can leave in a slot
// file is swept at the next Open. A packet whose meta record reached the
// disk but whose slot write did not (the slot holds zeroes; the packet was
// never acknowledged: the ack waits for the sync of both) is deleted with
// its item, and the queue opens; a slot written for a transaction that
// never committed is free and cut off the file. The other packets stay.
func TestSlotsLostInACrashAreSwept(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	if err := q.StoreInSlots(slotTestSize); err != nil {
		t.Fatal(err)
	}
	items := putPackets(t, q, testPacket("kept "), testPacket("lost "))
	// A slot written by a transaction that did not commit.
	k, err := q.keys.alloc(NewID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.slots.put(k, NewID(), testPacket("uncommitted ")); err != nil {
		t.Fatal(err)
	}
	q.Close()
	span := slotSpan(slotTestSize)
	if got := slotFileSize(t, dir); got != 3 {
		t.Fatalf("slot file of %d slots before the crash, want 3", got)
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(slotFilePrefix, slotTestSize)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, span), 1*span); err != nil { // "lost" never reached the disk
		t.Fatal(err)
	}
	f.Close()

	q = open(t, dir)
	defer q.Close()
	if _, err := q.Get(items[1].ID); err != ErrNotFound {
		t.Errorf("item of the lost packet: %v, want ErrNotFound", err)
	}
	if b, err := q.Blob(items[0].Body); err != nil || !bytes.HasPrefix(b, []byte("kept ")) {
		t.Errorf("kept packet: %.8q, %v", b, err)
	}
	if got := slotFileSize(t, dir); got != 1 {
		t.Errorf("slot file of %d slots after the sweep, want the one used", got)
	}
	n := 0
	if err := q.Items(func(*Item) error { n++; return nil }); err != nil || n != 1 {
		t.Errorf("%d items after the sweep (%v), want 1", n, err)
	}
}

// TestSlotFileKeepsAShortFreeTail: a sync does not cut a free tail shorter
// than minFreeTail slots or than the used part before it (the next packets
// reuse those slots and their disk blocks instead of the file shrinking
// and growing at every sync); a longer tail is cut.
func TestSlotFileKeepsAShortFreeTail(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	defer q.Close()
	if err := q.StoreInSlots(slotTestSize); err != nil {
		t.Fatal(err)
	}
	packets := make([][]byte, 200)
	for i := range packets {
		packets[i] = testPacket(fmt.Sprintf("p%03d ", i))
	}
	items := putPackets(t, q, packets...)
	release := func(its []*Item) {
		t.Helper()
		for _, it := range its {
			if err := q.Delete(it); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if err := q.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	release(items[150:]) // a tail of 50 < minFreeTail
	if got := slotFileSize(t, dir); got != 200 {
		t.Errorf("slot file of %d slots after 50 at its end were freed, want 200 (kept)", got)
	}
	release(items[100:150]) // a tail of 100 >= minFreeTail, as long as the 100 used
	if got := slotFileSize(t, dir); got != 100 {
		t.Errorf("slot file of %d slots after its last 100 were freed, want 100", got)
	}
	release(items[30:100]) // a tail of 70 >= minFreeTail but > the 30 used
	if got := slotFileSize(t, dir); got != 30 {
		t.Errorf("slot file of %d slots after 70 more were freed, want 30", got)
	}
}
