package queue

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
)

// keyStore holds the sealing keys of the queue's owners (items and blobs)
// in a file of fixed 64-byte slots that is overwritten in place: badger
// cannot forget a key it once stored (it stays in memtables, tables and the
// value log until compaction), a slot zeroed with pwrite and fsync can.
//
// Slot layout: [16] owner id, [32] AES-256 key, [12] zero, [4] CRC-32C of
// the first 60 bytes. An all-zero slot is free. 64 divides the page size,
// so a slot never straddles a page and a torn write shows as a bad CRC.
//
// Life of a key: alloc writes the slot (page cache; sync makes it durable
// before the 250, in the same group commit as badger); destroy drops the
// key from memory at once and queues the slot; zeroDead, run by the sync
// loop once badger has synced the deletes, overwrites the slots with
// zeroes, and the next sync's fsync puts the zeroes on disk and frees the
// slots for reuse. A slot is never reused before its zeroes are on disk,
// and a key is never zeroed on disk before the deletes of its owner are.
type keyStore struct {
	mu     sync.Mutex
	f      *os.File
	owner  map[ID]int // owner -> slot
	keys   [][]byte   // slot -> key (nil: free or dead)
	free   []int
	dead   []int // destroyed, not yet zeroed on disk
	zeroed []int // zeroed in the page cache, free after the next fsync
	dirty  bool  // slots written since the last fsync
}

const (
	slotSize = 64
	// keyFileName is the key file inside the queue directory.
	keyFileName = "sealkeys"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// openKeyStore opens (or creates, mode 0600) the key file at path. Slots
// with a bad CRC (a torn write) are zeroed.
func openKeyStore(path string) (*keyStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: key file: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("queue: key file: %w", err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("queue: key file: %w", err)
	}
	ks := &keyStore{f: f, owner: map[ID]int{}}
	var zero [slotSize]byte
	for i := 0; (i+1)*slotSize <= len(raw); i++ {
		s := raw[i*slotSize : (i+1)*slotSize]
		ks.keys = append(ks.keys, nil)
		switch {
		case string(s) == string(zero[:]):
			ks.free = append(ks.free, i)
		case crc32.Checksum(s[:60], crcTable) != binary.BigEndian.Uint32(s[60:]):
			ks.dead = append(ks.dead, i)
		default:
			var o ID
			copy(o[:], s[:16])
			if _, dup := ks.owner[o]; dup {
				ks.dead = append(ks.dead, i)
				continue
			}
			ks.owner[o] = i
			ks.keys[i] = append([]byte(nil), s[16:48]...)
		}
		clear(s)
	}
	return ks, nil
}

// key returns the key of owner (a copy), or nil if it has none.
func (ks *keyStore) key(owner ID) []byte {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if i, ok := ks.owner[owner]; ok {
		return append([]byte(nil), ks.keys[i]...)
	}
	return nil
}

// alloc gives owner a new random key in a slot (page cache only until
// sync) and returns it. It fails only on a write error.
func (ks *keyStore) alloc(owner ID) ([]byte, error) {
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	var s [slotSize]byte
	copy(s[:16], owner[:])
	copy(s[16:48], key)
	binary.BigEndian.PutUint32(s[60:], crc32.Checksum(s[:60], crcTable))
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if _, ok := ks.owner[owner]; ok {
		return nil, fmt.Errorf("queue: owner %s already has a key", owner)
	}
	var i int
	if n := len(ks.free); n > 0 {
		i, ks.free = ks.free[n-1], ks.free[:n-1]
	} else {
		i = len(ks.keys)
		ks.keys = append(ks.keys, nil)
	}
	if _, err := ks.f.WriteAt(s[:], int64(i)*slotSize); err != nil {
		ks.free = append(ks.free, i)
		return nil, fmt.Errorf("queue: key file: %w", err)
	}
	clear(s[:])
	ks.owner[owner] = i
	ks.keys[i] = key
	ks.dirty = true
	return append([]byte(nil), key...), nil
}

// destroy forgets the keys of owners: gone from memory now, zeroed on disk
// by the next zeroDead.
func (ks *keyStore) destroy(owners []ID) {
	if len(owners) == 0 {
		return
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	for _, o := range owners {
		i, ok := ks.owner[o]
		if !ok {
			continue
		}
		delete(ks.owner, o)
		clear(ks.keys[i])
		ks.keys[i] = nil
		ks.dead = append(ks.dead, i)
	}
}

// pending reports whether a sync has work: slots to make durable or dead
// slots to zero.
func (ks *keyStore) pending() bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.dirty || len(ks.dead) > 0 || len(ks.zeroed) > 0
}

// sync makes every slot written so far durable (new keys, and zeroes
// written by zeroDead) and frees the zeroed slots.
func (ks *keyStore) sync() error {
	ks.mu.Lock()
	dirty, zeroed := ks.dirty, ks.zeroed
	ks.dirty, ks.zeroed = false, nil
	ks.mu.Unlock()
	if !dirty {
		return nil
	}
	if err := ks.f.Sync(); err != nil {
		ks.mu.Lock()
		ks.dirty = true
		ks.zeroed = append(ks.zeroed, zeroed...)
		ks.mu.Unlock()
		return fmt.Errorf("queue: key file sync: %w", err)
	}
	ks.mu.Lock()
	ks.free = append(ks.free, zeroed...)
	ks.mu.Unlock()
	return nil
}

// takeDead returns the slots destroyed so far; the caller syncs badger (so
// the deletes that led to them are durable) and then calls zeroDead.
func (ks *keyStore) takeDead() []int {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	d := ks.dead
	ks.dead = nil
	return d
}

// zeroDead overwrites slots with zeroes (page cache; on disk at the next
// sync). On a write error the remaining slots stay dead and are retried.
func (ks *keyStore) zeroDead(slots []int) error {
	var zero [slotSize]byte
	for j, i := range slots {
		if _, err := ks.f.WriteAt(zero[:], int64(i)*slotSize); err != nil {
			ks.requeue(slots[j:])
			return fmt.Errorf("queue: key file: %w", err)
		}
		ks.mu.Lock()
		ks.zeroed = append(ks.zeroed, i)
		ks.dirty = true
		ks.mu.Unlock()
	}
	return nil
}

func (ks *keyStore) requeue(slots []int) {
	ks.mu.Lock()
	ks.dead = append(ks.dead, slots...)
	ks.mu.Unlock()
}

// owners returns every owner that has a key.
func (ks *keyStore) owners() []ID {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	out := make([]ID, 0, len(ks.owner))
	for o := range ks.owner {
		out = append(out, o)
	}
	return out
}

func (ks *keyStore) close() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	for i := range ks.keys {
		clear(ks.keys[i])
	}
	return ks.f.Close()
}
