package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mixmta/mixmta/sdk"
)

// ChunkSize is the most content bytes one stored value holds (256 KiB). A
// blob is a meta record (reference count and length) plus
// ceil(length/ChunkSize) chunks, each sealed on its own, so a body is read
// and written in bounded memory and no value approaches badger's
// value-log file size.
const ChunkSize = 256 << 10

func chunkKey(blob ID, i uint32) []byte {
	k := make([]byte, len(prefixBlob)+len(blob)+4)
	copy(k, prefixBlob)
	copy(k[len(prefixBlob):], blob[:])
	binary.BigEndian.PutUint32(k[len(prefixBlob)+len(blob):], i)
	return k
}

func chunks(length int64) uint32 { return uint32((length + ChunkSize - 1) / ChunkSize) }

// blobMeta is a blob's meta record: how many items use it, its length in
// bytes, and for a blob kept in a slot file (see slots.go) its slot.
// Encoded as uvarints: refs, length, and the slot only if slotted.
type blobMeta struct {
	refs    uint64
	length  int64
	slotted bool
	slot    int64
}

func (m blobMeta) encode() []byte {
	b := binary.AppendUvarint(binary.AppendUvarint(nil, m.refs), uint64(m.length))
	if m.slotted {
		b = binary.AppendUvarint(b, uint64(m.slot))
	}
	return b
}

func (m blobMeta) slotRef() slotRef { return slotRef{size: m.length, slot: m.slot} }

func decodeMeta(b []byte) (blobMeta, error) {
	refs, n := binary.Uvarint(b)
	if n <= 0 {
		return blobMeta{}, errors.New("queue: corrupt blob meta")
	}
	length, k := binary.Uvarint(b[n:])
	if k <= 0 {
		return blobMeta{}, errors.New("queue: corrupt blob meta")
	}
	m := blobMeta{refs: refs, length: int64(length)}
	if rest := b[n+k:]; len(rest) > 0 {
		slot, j := binary.Uvarint(rest)
		if j <= 0 || slot > 1<<40 {
			return blobMeta{}, errors.New("queue: corrupt blob meta")
		}
		m.slotted, m.slot = true, int64(slot)
	}
	return m, nil
}

// wtx is one attempt of a read-write transaction: the keys and slots it
// allocated (destroyed and released if it does not commit) and the owners
// and slots it deleted (whose keys are destroyed once it has committed,
// whose slots are freed once the delete is on disk).
type wtx struct {
	q         *Queue
	txn       *badger.Txn
	alloc     []ID
	dead      []ID
	slots     []slotRef
	deadSlots []slotRef
}

func (w *wtx) newKey(owner ID) ([]byte, error) {
	k, err := w.q.keys.alloc(owner)
	if err != nil {
		return nil, err
	}
	w.alloc = append(w.alloc, owner)
	return k, nil
}

// putItem writes an item's record sealed under the item's key (a new key
// for a new item).
func (w *wtx) putItem(it *Item) error {
	b, err := json.Marshal(it)
	if err != nil {
		return err
	}
	k := w.q.keys.key(it.ID)
	if k == nil {
		if k, err = w.newKey(it.ID); err != nil {
			return err
		}
	}
	return w.txn.Set(key(prefixItem, it.ID), seal(k, it.ID, partItem, b))
}

// putBlob stores data as a new blob with one reference: in a slot file if
// its size was registered (StoreInSlots), else in chunks in badger.
func (w *wtx) putBlob(data []byte) (ID, error) {
	id := NewID()
	k, err := w.newKey(id)
	if err != nil {
		return id, err
	}
	if len(data) > 0 && w.q.slots.writable(int64(len(data))) {
		r, err := w.q.slots.put(k, id, data)
		if err != nil {
			return id, err
		}
		w.slots = append(w.slots, r)
		m := blobMeta{refs: 1, length: int64(len(data)), slotted: true, slot: r.slot}
		return id, w.txn.Set(key(prefixCount, id), seal(k, id, partMeta, m.encode()))
	}
	for i := uint32(0); int64(i) < int64(chunks(int64(len(data)))); i++ {
		c := data[int(i)*ChunkSize : min(len(data), int(i+1)*ChunkSize)]
		if err := w.txn.Set(chunkKey(id, i), seal(k, id, i, c)); err != nil {
			return id, err
		}
	}
	return id, w.txn.Set(key(prefixCount, id), seal(k, id, partMeta, blobMeta{refs: 1, length: int64(len(data))}.encode()))
}

// meta reads a blob's meta record in txn.
func (q *Queue) meta(txn *badger.Txn, blob ID) (blobMeta, []byte, error) {
	item, err := txn.Get(key(prefixCount, blob))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return blobMeta{}, nil, ErrNotFound
	}
	if err != nil {
		return blobMeta{}, nil, err
	}
	k := q.keys.key(blob)
	if k == nil {
		return blobMeta{}, nil, ErrNotFound // deleted meanwhile
	}
	var m blobMeta
	err = item.Value(func(v []byte) error {
		plain, err := unseal(k, blob, partMeta, v)
		if err != nil {
			return err
		}
		m, err = decodeMeta(plain)
		return err
	})
	return m, k, err
}

// addRef changes a blob's reference count; at zero the blob (meta and
// chunks) is deleted and its key destroyed after the commit. Releasing a
// blob that is already gone is not an error.
func (w *wtx) addRef(blob ID, delta int) error {
	if blob == (ID{}) {
		return nil
	}
	m, k, err := w.q.meta(w.txn, blob)
	if errors.Is(err, ErrNotFound) && delta < 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: blob %s: %w", blob, err)
	}
	next := int64(m.refs) + int64(delta)
	if next > 0 {
		m.refs = uint64(next)
		return w.txn.Set(key(prefixCount, blob), seal(k, blob, partMeta, m.encode()))
	}
	if m.slotted {
		w.deadSlots = append(w.deadSlots, m.slotRef())
	}
	for i := uint32(0); i < chunks(m.length) && !m.slotted; i++ {
		if err := w.txn.Delete(chunkKey(blob, i)); err != nil {
			return err
		}
	}
	w.dead = append(w.dead, blob)
	return w.txn.Delete(key(prefixCount, blob))
}

// deleteItem removes an item record and releases its blobs.
func (w *wtx) deleteItem(it *Item) error {
	if err := w.txn.Delete(key(prefixItem, it.ID)); err != nil {
		return err
	}
	w.dead = append(w.dead, it.ID)
	if err := w.addRef(it.Header, -1); err != nil {
		return err
	}
	return w.addRef(it.Body, -1)
}

// openItem decodes item id's sealed record v into it.
func (q *Queue) openItem(id ID, v []byte, it *Item) error {
	k := q.keys.key(id)
	if k == nil {
		return ErrNotFound // deleted meanwhile, or its key is gone
	}
	plain, err := unseal(k, id, partItem, v)
	if err != nil {
		return fmt.Errorf("queue: item %s: %w", id, err)
	}
	return json.Unmarshal(plain, it)
}

// BlobLen returns a blob's length in bytes.
func (q *Queue) BlobLen(id ID) (int64, error) {
	if id == (ID{}) {
		return 0, nil
	}
	var n int64
	err := q.db.View(func(txn *badger.Txn) error {
		m, _, err := q.meta(txn, id)
		n = m.length
		return err
	})
	return n, err
}

// Blob returns a copy of a content blob; the zero ID gives nil. Errors:
// ErrNotFound for a blob that is not (or no longer) in the queue.
func (q *Queue) Blob(id ID) ([]byte, error) {
	if id == (ID{}) {
		return nil, nil
	}
	var out []byte
	err := q.db.View(func(txn *badger.Txn) error {
		m, k, err := q.meta(txn, id)
		if err != nil {
			return err
		}
		out = make([]byte, 0, m.length)
		for i := uint32(0); i < chunks(m.length); i++ {
			if out, err = q.chunk(txn, m, k, id, i, out); err != nil {
				return err
			}
		}
		if int64(len(out)) != m.length {
			return fmt.Errorf("queue: blob %s has %d bytes, meta says %d", id, len(out), m.length)
		}
		return nil
	})
	return out, err
}

// chunk appends chunk i of blob id (meta m) to dst.
func (q *Queue) chunk(txn *badger.Txn, m blobMeta, k []byte, id ID, i uint32, dst []byte) ([]byte, error) {
	if m.slotted {
		return q.slots.read(m.slotRef(), k, id, dst) // one chunk: a slot blob is at most ChunkSize
	}
	item, err := txn.Get(chunkKey(id, i))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return dst, fmt.Errorf("queue: blob %s: chunk %d missing", id, i)
	}
	if err != nil {
		return dst, err
	}
	err = item.Value(func(v []byte) error {
		out, err := unsealAppend(dst, k, id, i, v)
		if err != nil {
			return fmt.Errorf("queue: blob %s: %w", id, err)
		}
		dst = out
		return nil
	})
	return dst, err
}

// sweep runs at Open, before anything else uses the queue: it removes what
// a crash left half done. Keys whose owner has no record are destroyed (an
// allocation whose transaction never committed, a delete whose key was
// not yet zeroed); records whose key is gone are deleted (unreadable
// anyway); chunks without a meta record (a body whose message was never
// committed) are deleted. Slots that meta records name are claimed, the
// others are free; a meta record whose slot does not hold its blob (the
// slot's write did not reach the disk before a power loss, so its item was
// never acknowledged) is deleted with the items that use it.
func (q *Queue) sweep() error {
	live := map[ID]bool{}
	broken := map[ID]bool{}
	var orphans [][]byte
	err := q.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		metas := map[ID]bool{}
		var chunkKeys [][]byte
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			var id ID
			switch {
			case len(k) == len(prefixItem)+len(id) && string(k[:2]) == string(prefixItem):
				copy(id[:], k[2:])
			case len(k) == len(prefixCount)+len(id) && string(k[:2]) == string(prefixCount):
				copy(id[:], k[2:])
				metas[id] = true
				if ok, err := q.claimSlot(it.Item(), id); err != nil {
					return err
				} else if !ok {
					broken[id] = true
					orphans = append(orphans, k)
					continue
				}
			case string(k[:min(2, len(k))]) == string(prefixBlob):
				chunkKeys = append(chunkKeys, k)
				continue
			default:
				continue
			}
			if q.keys.key(id) == nil {
				orphans = append(orphans, k)
				continue
			}
			live[id] = true
		}
		for _, k := range chunkKeys {
			var id ID
			if len(k) == len(prefixBlob)+len(id)+4 {
				copy(id[:], k[2:])
			}
			if !metas[id] || !live[id] {
				orphans = append(orphans, k)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := q.slots.opened(); err != nil {
		return err
	}
	var dead []ID
	for _, o := range q.keys.owners() {
		if !live[o] {
			dead = append(dead, o)
		}
	}
	q.keys.destroy(dead)
	for len(orphans) > 0 {
		n := min(len(orphans), 1000)
		if err := q.db.Update(func(txn *badger.Txn) error {
			for _, k := range orphans[:n] {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		orphans = orphans[n:]
	}
	if len(dead) > 0 {
		q.log.Info("[QUEUE] destroyed keys left by an interrupted change", "count", len(dead))
	}
	if len(broken) == 0 {
		return nil
	}
	var lost []*Item
	if err := q.Items(func(it *Item) error {
		if broken[it.Header] || broken[it.Body] {
			lost = append(lost, it)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, it := range lost {
		if err := q.Delete(it); err != nil {
			return err
		}
	}
	q.log.Warn("[QUEUE] deleted items whose stored packet did not reach the disk before a crash (never acknowledged)", "count", len(lost))
	return nil
}

// claimSlot reads a meta record at Open and, for a blob kept in a slot
// file, claims its slot. false: the record is broken (it does not open,
// or its slot is missing, claimed twice, or holds no value of this blob).
// A record whose key is gone is left to the caller (true).
func (q *Queue) claimSlot(item *badger.Item, id ID) (bool, error) {
	k := q.keys.key(id)
	if k == nil {
		return true, nil
	}
	var m blobMeta
	var bad error
	err := item.Value(func(v []byte) error {
		plain, err := unseal(k, id, partMeta, v)
		if err == nil {
			m, err = decodeMeta(plain)
		}
		bad = err
		return nil
	})
	if err != nil || bad != nil || !m.slotted {
		return err == nil && bad == nil, err
	}
	return q.slots.holds(m.slotRef(), id) && q.slots.markUsed(m.slotRef()), nil
}

// BodyWriter streams a message body into the queue in bounded memory: each
// ChunkSize bytes are sealed and committed as one chunk as they arrive, so
// a session holds one chunk, never the whole body. The body belongs to no
// message until AcceptBody commits it (a crash before that leaves chunks
// that the next Open sweeps away); Abort discards it.
type BodyWriter struct {
	q        *Queue
	id       ID
	key      []byte
	buf      []byte
	n        int64
	err      error
	opened   bool // Open was called: no more writes
	accepted bool // AcceptBody committed it: Abort does nothing
}

// NewBody starts a body. Errors: a key-file write error.
func (q *Queue) NewBody() (*BodyWriter, error) {
	id := NewID()
	k, err := q.keys.alloc(id)
	if err != nil {
		return nil, err
	}
	return &BodyWriter{q: q, id: id, key: k}, nil
}

// Write appends p. An error is sticky: every later Write and AcceptBody
// fail with it.
func (w *BodyWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.opened {
		return 0, errors.New("queue: body written after Open")
	}
	n := len(p)
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = (*chunkBufs.Get().(*[]byte))[:0]
		}
		c := min(len(p), ChunkSize-len(w.buf))
		w.buf, p = append(w.buf, p[:c]...), p[c:]
		if len(w.buf) == ChunkSize {
			if err := w.flush(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// chunkBufs holds the ChunkSize buffers BodyWriters fill: a message
// would otherwise allocate (and the runtime zero) 256 KiB, whatever its
// size.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, 0, ChunkSize); return &b }}

// release gives the chunk buffer back once no chunk can follow.
func (w *BodyWriter) release() {
	if w.buf != nil {
		b := w.buf[:0]
		chunkBufs.Put(&b)
		w.buf = nil
	}
}

// flush commits the buffered bytes as the next chunk.
func (w *BodyWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	i := chunks(w.n)
	v := seal(w.key, w.id, i, w.buf)
	if err := w.q.db.Update(func(txn *badger.Txn) error { return txn.Set(chunkKey(w.id, i), v) }); err != nil {
		w.err = fmt.Errorf("queue: body chunk: %w", err)
		return w.err
	}
	w.q.trim.note(len(w.buf))
	w.n += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// Len is the number of bytes written so far.
func (w *BodyWriter) Len() int64 { return w.n + int64(len(w.buf)) }

// Open returns a reader of the whole body, e.g. for a checker stage that
// reads it before the message is accepted; it may be called more than
// once, and no Write may follow it (every chunk but the last is full).
func (w *BodyWriter) Open() (io.Reader, error) {
	if err := w.flush(); err != nil {
		return nil, err
	}
	w.opened = true
	return &blobReader{q: w.q, id: w.id, key: w.key, meta: blobMeta{length: w.n}}, nil
}

// Abort discards the body: its chunks are deleted and its key destroyed.
// After AcceptBody committed the message it does nothing.
func (w *BodyWriter) Abort() {
	if w.accepted {
		return
	}
	n := chunks(w.n)
	for i := uint32(0); i < n; {
		_ = w.q.db.Update(func(txn *badger.Txn) error {
			for ; i < n; i++ {
				if err := txn.Delete(chunkKey(w.id, i)); err != nil {
					return err
				}
			}
			return nil
		})
		if i < n { // an error other than a full transaction: the sweep at the next Open removes them
			break
		}
	}
	w.q.keys.destroy([]ID{w.id})
	clear(w.key)
	w.err = errors.New("queue: body aborted")
	w.release()
}

// AcceptBody is Accept for a body streamed with a BodyWriter: header blob,
// the body's last chunk and meta record and the item in one transaction,
// synced before it returns (only then may the SMTP server answer 250).
func (q *Queue) AcceptBody(env sdk.Envelope, header []byte, body *BodyWriter, received time.Time) (*Item, error) {
	if body.err != nil {
		return nil, body.err
	}
	// The last (for most messages the only) chunk is committed with the
	// item: one transaction, not two.
	var last []byte
	lastPart := chunks(body.n)
	if len(body.buf) > 0 {
		last = seal(body.key, body.id, lastPart, body.buf)
	}
	n := body.Len()
	it := &Item{ID: NewID(), Envelope: env, Size: int64(len(header)) + n, Received: received, Deliverer: -1, Body: body.id}
	it.Msg = it.ID
	err := q.update(func(w *wtx) error {
		if last != nil {
			if err := w.txn.Set(chunkKey(body.id, lastPart), last); err != nil {
				return err
			}
		}
		var err error
		if it.Header, err = w.putBlob(header); err != nil {
			return err
		}
		if err := w.txn.Set(key(prefixCount, body.id), seal(body.key, body.id, partMeta, blobMeta{refs: 1, length: n}.encode())); err != nil {
			return err
		}
		return w.putItem(it)
	})
	if err != nil {
		return nil, fmt.Errorf("queue: accept: %w", err)
	}
	q.trim.note(len(body.buf))
	body.n = n
	body.release()
	body.err, body.accepted = errors.New("queue: body already accepted"), true
	clear(body.key) // the queue's key store keeps the one copy that matters
	if err := q.Sync(); err != nil {
		return nil, fmt.Errorf("queue: sync: %w", err)
	}
	return it, nil
}

// BlobReader returns a reader of a blob that loads one chunk at a time (the
// zero ID reads as empty). Reading fails with ErrNotFound if the blob
// leaves the queue meanwhile.
func (q *Queue) BlobReader(id ID) (io.Reader, error) {
	if id == (ID{}) {
		return bytes.NewReader(nil), nil
	}
	r := &blobReader{q: q, id: id}
	err := q.db.View(func(txn *badger.Txn) error {
		m, k, err := q.meta(txn, id)
		r.key, r.meta = k, m
		return err
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

type blobReader struct {
	q    *Queue
	id   ID
	key  []byte
	meta blobMeta
	next uint32
	buf  []byte
	cur  []byte
}

func (r *blobReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.next >= chunks(r.meta.length) {
			return 0, io.EOF
		}
		err := r.q.db.View(func(txn *badger.Txn) error {
			var err error
			r.buf, err = r.q.chunk(txn, r.meta, r.key, r.id, r.next, r.buf[:0])
			r.cur = r.buf
			return err
		})
		if err != nil {
			return 0, err
		}
		r.q.trim.note(len(r.buf))
		r.next++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
