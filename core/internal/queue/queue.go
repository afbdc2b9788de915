// Package queue is mixmta's durable queue: every message and every pipeline
// item lives in one badger database, every state change is one transaction,
// and an accepted message is synced to disk before the SMTP 250 (sessions
// share syncs: group commit). Items are indexed in memory and rebuilt from
// disk at start, so on restart each item resumes where it was.
//
// Storage forgets: every item record and every blob (header section, body,
// packet, fragment) is sealed with AES-256-GCM under a key of its own, kept
// in a slotted key file outside badger and zeroed in place when the item or
// blob leaves (see keyStore, seal.go). Within two FlushIntervals (2 s) of
// an item's delete its key is gone from the disk, and everything badger still
// keeps of it (memtable, WAL, tables, value log) is ciphertext nobody can
// open, whatever else is still queued.
//
// Layout (keys; every value sealed unless noted):
//
//	i/<item id 16 B>             item record (JSON, see Item)
//	n/<blob id 16 B>             blob meta: reference count, length
//	c/<blob id 16 B><index 4 B>  blob chunk of at most ChunkSize bytes
//	r/<key>                      replay tag or message-id mark (no value)
//	s/<name>                     small state owned by the core (counters;
//	                             not sealed, never message data)
//	sealkeys (a file beside badger's) the key slots
package queue

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// ID is a random 16-byte identifier of an item or blob. Its String is 32
// lowercase hex digits. It encodes neither sender nor time.
type ID [16]byte

// NewID returns a random ID from crypto/rand.
func NewID() ID {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		panic(err)
	}
	return id
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID parses 32 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("queue: bad id %q: want 32 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// MarshalText and UnmarshalText make ID a hex string in JSON.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	*id = v
	return err
}

// Item is one unit of work in the pipeline: a message (or a part of one
// after routing) with the stage it resumes at.
type Item struct {
	ID ID `json:"id"`
	// Msg is the id of the accepted message this item descends from; all
	// items of one message share it (the id plugins see).
	Msg      ID           `json:"msg"`
	Envelope sdk.Envelope `json:"env"`
	// Header and Body are blob ids; the zero ID means none (e.g. a packet
	// item keeps its whole content in Body).
	Header ID `json:"hdr"`
	Body   ID `json:"body"`
	// Size is len(header)+len(body) in bytes.
	Size int64 `json:"size"`
	// Stage is the index of the next pipeline stage to run.
	Stage int `json:"stage"`
	// Deliverer, if >= 0, pins the deliverer stage a router chose.
	Deliverer int `json:"dlv"`
	// Received is when the message was accepted (250).
	Received time.Time `json:"rcvd"`
	// SendAfter: the item waits in the scheduler until then.
	SendAfter time.Time `json:"after"`
	// Attempts counts failed delivery attempts.
	Attempts int `json:"att"`
	// Waiting: the item waits for the scheduler (a delay was sampled or it
	// reached its deliverer) rather than for a pipeline worker.
	Waiting bool `json:"wait"`
	// Failures counts failed calls of the stage at Stage on this item
	// (errors and crashes, not delivery attempts: those are Attempts); it
	// restarts at 0 when the item moves to the next stage. Crashes counts
	// the failed calls during which the stage's plugin process died.
	Failures int `json:"fails,omitempty"`
	Crashes  int `json:"crashes,omitempty"`
	// Held: quarantined by the engine or held by the operator; the engine
	// leaves the item alone until it is released (`mixmta queue release`).
	Held bool `json:"held,omitempty"`
	// Reason says why the item waits or is held: the last deferral or the
	// quarantine cause, as a stage name and a reply code, never an address.
	Reason string `json:"reason,omitempty"`

	// Kind says what the item is; packet items carry no envelope.
	Kind Kind `json:"kind,omitempty"`
	// NextHop is the node a KindPacketOut item goes to.
	NextHop sdk.NodeID `json:"hop,omitzero"`
	// FragIndex and FragCount place a KindFragment item in its message
	// (whose id is Msg).
	FragIndex int `json:"fi,omitempty"`
	FragCount int `json:"fc,omitempty"`
	// AsReceived marks a KindPacketOut item whose body is the packet as
	// this node received it, not its forward form: the mixer's unwrap is
	// deterministic, so the forward form is derived again from it when it
	// is not in memory (after a restart). A forwarded packet is then
	// stored once, not a second time after its unwrap.
	AsReceived bool `json:"rx,omitempty"`
}

// Kind is the kind of a queue item.
type Kind string

const (
	// KindMessage (""): a message or one delivery of it, moving through the
	// pipeline stages.
	KindMessage Kind = ""
	// KindPacketIn: a packet received from another mix, not yet unwrapped.
	KindPacketIn Kind = "packet-in"
	// KindPacketOut: a packet waiting to be sent to NextHop.
	KindPacketOut Kind = "packet-out"
	// KindFragment: an exit payload fragment waiting for the rest of its
	// message.
	KindFragment Kind = "fragment"
)

var (
	prefixItem  = []byte("i/")
	prefixBlob  = []byte("c/")
	prefixCount = []byte("n/")
	prefixState = []byte("s/")
	prefixMark  = []byte("r/")
)

func key(prefix []byte, id ID) []byte {
	k := make([]byte, len(prefix)+len(id))
	copy(k, prefix)
	copy(k[len(prefix):], id[:])
	return k
}

// ErrNotFound is returned for an item or blob that is not in the queue.
var ErrNotFound = errors.New("queue: not found")

// Queue is the durable queue. Its methods are safe for concurrent use.
type Queue struct {
	db     *badger.DB
	keys   *keyStore
	trim   *trimmer
	log    hclog.Logger
	syncer *groupSync
	gcStop chan struct{}
	gcDone chan struct{}
	once   sync.Once
}

// Options tune Open.
type Options struct {
	// GCInterval between value-log GC runs (default 5 min).
	GCInterval time.Duration
	Logger     hclog.Logger
}

// Open opens (or creates, mode 0700) the queue database in dir. Only one
// process may open a queue; a second Open fails with badger's lock error.
// badger is tuned for a small footprint (measured: 26 MiB RSS after 8,000
// 32 KiB writes, against 542 MiB with the defaults): 8 MiB memtables (a
// memtable's arena is the largest live object of an idle core; what is in
// it is keys, item records and value pointers, so a mix node flushes one
// every few thousand packets; a transaction may hold 15 % of a memtable,
// and Split writes all the packets of a message in one: about 1,400
// children at 8 MiB, 1,025 at 4 MiB, where a 32 MiB message in 32 KiB
// packets needs 1,067 to 1,237), values
// above 1 KiB in the value log, 64 MiB value-log files, no compression,
// small caches. Writes are not synced individually: Accept
// syncs through group commit; later state changes survive a process crash
// (kill -9) through the OS page cache and are synced with the next group.
func Open(dir string, o Options) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log.Named("badger")}).
		WithSyncWrites(false).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithValueThreshold(1 << 10).
		WithValueLogFileSize(64 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(8 << 20).
		WithNumCompactors(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithCompression(options.None).
		WithDetectConflicts(true)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", dir, err)
	}
	keys, err := openKeyStore(filepath.Join(dir, keyFileName))
	if err != nil {
		db.Close()
		return nil, err
	}
	q := &Queue{db: db, keys: keys, log: log, gcStop: make(chan struct{}), gcDone: make(chan struct{}), trim: newTrimmer(dir)}
	migrated, err := q.migrate()
	if err == nil {
		err = q.sweep()
	}
	if err != nil {
		q.trim.close()
		keys.close()
		db.Close()
		return nil, fmt.Errorf("queue: open %s: %w", dir, err)
	}
	if migrated > 0 {
		log.Info("[QUEUE] sealed the items of a queue written by an older version", "items", migrated)
	}
	q.syncer = newGroupSync(db, keys)
	interval := o.GCInterval
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	go q.gcLoop(interval)
	return q, nil
}

// Close syncs and closes the database.
func (q *Queue) Close() error {
	var err error
	q.once.Do(func() {
		close(q.gcStop)
		<-q.gcDone
		q.syncer.close()
		if e := q.syncer.syncAll(); e != nil {
			err = e
		}
		if e := q.keys.sync(); e != nil && err == nil {
			err = e
		}
		if e := q.db.Close(); e != nil && err == nil {
			err = e
		}
		if e := q.keys.close(); e != nil && err == nil {
			err = e
		}
		q.trim.close()
	})
	return err
}

// Sync waits until every transaction committed before the call is on disk.
// Concurrent callers share one fsync (group commit).
func (q *Queue) Sync() error { return q.syncer.wait() }

// update runs fn in a read-write transaction, retrying on conflicts. Keys
// allocated by an attempt that does not commit are destroyed; keys of
// owners the transaction deleted are destroyed once it has committed.
func (q *Queue) update(fn func(w *wtx) error) error {
	for attempt := 0; ; attempt++ {
		w := &wtx{q: q}
		err := q.db.Update(func(txn *badger.Txn) error {
			w.txn = txn
			return fn(w)
		})
		if err != nil {
			q.keys.destroy(w.alloc)
			if errors.Is(err, badger.ErrConflict) && attempt < 100 {
				continue
			}
			return err
		}
		q.keys.destroy(w.dead)
		return nil
	}
}

// Accept stores a newly received message as one item at stage 0 and
// returns once it is synced to disk: only then may the SMTP server answer
// 250 (RFC 5321 §6.1). header is the raw header section (ends CRLF CRLF),
// body the raw body; either may be empty.
func (q *Queue) Accept(env sdk.Envelope, header, body []byte, received time.Time) (*Item, error) {
	return q.Insert(env, header, body, received, 0)
}

// Insert is Accept for a message that starts at pipeline stage stage (e.g.
// a delivery status notification that goes straight to a deliverer).
func (q *Queue) Insert(env sdk.Envelope, header, body []byte, received time.Time, stage int) (*Item, error) {
	it := &Item{ID: NewID(), Envelope: env, Size: int64(len(header) + len(body)), Received: received, Deliverer: -1, Stage: stage}
	it.Msg = it.ID
	err := q.update(func(w *wtx) error {
		var err error
		if it.Header, err = w.putBlob(header); err != nil {
			return err
		}
		if it.Body, err = w.putBlob(body); err != nil {
			return err
		}
		return w.putItem(it)
	})
	if err != nil {
		return nil, fmt.Errorf("queue: accept: %w", err)
	}
	if err := q.Sync(); err != nil {
		return nil, fmt.Errorf("queue: sync: %w", err)
	}
	return it, nil
}

// Put stores a new item whose content is one blob (e.g. a packet received
// from another mix) and syncs it before returning, like Accept.
func (q *Queue) Put(it *Item, content []byte) error {
	err := q.update(func(w *wtx) error {
		var err error
		if it.Body, err = w.putBlob(content); err != nil {
			return err
		}
		it.Header, it.Size = ID{}, int64(len(content))
		return w.putItem(it)
	})
	if err != nil {
		return fmt.Errorf("queue: put: %w", err)
	}
	return q.Sync()
}

// Update rewrites an item's record (stage, envelope, send_after, attempts).
func (q *Queue) Update(it *Item) error {
	return q.update(func(w *wtx) error {
		if _, err := w.txn.Get(key(prefixItem, it.ID)); err != nil {
			if errors.Is(err, badger.ErrKeyNotFound) {
				return ErrNotFound
			}
			return err
		}
		return w.putItem(it)
	})
}

// Replace is one transformation step in one transaction: the item's
// header and/or body are replaced (nil means unchanged; the old blob loses
// a reference) and the record is rewritten (it.Stage etc. as set by the
// caller).
func (q *Queue) Replace(it *Item, header, body []byte) error {
	next := *it
	err := q.update(func(w *wtx) error {
		next = *it
		if header != nil {
			id, err := w.putBlob(header)
			if err != nil {
				return err
			}
			if err := w.addRef(it.Header, -1); err != nil {
				return err
			}
			next.Header = id
		}
		if body != nil {
			id, err := w.putBlob(body)
			if err != nil {
				return err
			}
			if err := w.addRef(it.Body, -1); err != nil {
				return err
			}
			next.Body = id
		}
		return w.putItem(&next)
	})
	if err == nil {
		*it = next
	}
	return err
}

// Child describes one item a Split creates.
type Child struct {
	Kind      Kind
	NextHop   sdk.NodeID
	Envelope  sdk.Envelope
	Stage     int
	Deliverer int
	// Content, if not nil, replaces header and body with this one blob.
	Content []byte
	// SendAfter, if set, makes the child wait for the scheduler.
	SendAfter time.Time
}

// Split replaces item parent by its children in one transaction (a router
// turning one message into deliveries). Children without Content share the
// parent's header and body blobs.
func (q *Queue) Split(parent *Item, children []Child) ([]*Item, error) {
	var out []*Item
	err := q.update(func(w *wtx) error {
		out = out[:0]
		for _, c := range children {
			it := &Item{
				ID: NewID(), Msg: parent.Msg, Envelope: c.Envelope, Stage: c.Stage, Deliverer: c.Deliverer,
				Received: parent.Received, SendAfter: c.SendAfter, Waiting: !c.SendAfter.IsZero(),
				Kind: c.Kind, NextHop: c.NextHop,
			}
			if c.Kind != KindMessage {
				it.Msg = NewID() // packets of one message must not be linkable in the queue
			}
			if c.Content != nil {
				id, err := w.putBlob(c.Content)
				if err != nil {
					return err
				}
				it.Body, it.Size = id, int64(len(c.Content))
			} else {
				it.Header, it.Body, it.Size = parent.Header, parent.Body, parent.Size
				if err := w.addRef(it.Header, 1); err != nil {
					return err
				}
				if err := w.addRef(it.Body, 1); err != nil {
					return err
				}
			}
			if err := w.putItem(it); err != nil {
				return err
			}
			out = append(out, it)
		}
		return w.deleteItem(parent)
	})
	if err != nil {
		return nil, fmt.Errorf("queue: split: %w", err)
	}
	return out, nil
}

// Delete removes an item (delivered, or failed for good) and releases its
// blobs in one transaction. Deleting a missing item is not an error.
func (q *Queue) Delete(it *Item) error {
	return q.update(func(w *wtx) error {
		if _, err := w.txn.Get(key(prefixItem, it.ID)); errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		return w.deleteItem(it)
	})
}

// Get loads one item by id.
func (q *Queue) Get(id ID) (*Item, error) {
	var it Item
	err := q.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixItem, id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return q.openItem(id, v, &it) })
	})
	if err != nil {
		return nil, err
	}
	return &it, nil
}

// Items calls fn for every item in the queue, in key (random) order. A
// record that does not decode is reported as an error and skipped.
func (q *Queue) Items(fn func(*Item) error) error {
	return q.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefixItem
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var item Item
			var id ID
			copy(id[:], it.Item().Key()[len(prefixItem):])
			if err := it.Item().Value(func(v []byte) error { return q.openItem(id, v, &item) }); err != nil {
				q.log.Error("skipping undecodable queue item", "error", err)
				continue
			}
			if err := fn(&item); err != nil {
				return err
			}
		}
		return nil
	})
}

// State reads a small persistent value (nil if absent).
func (q *Queue) State(name string) ([]byte, error) {
	var out []byte
	err := q.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(append(append([]byte{}, prefixState...), name...))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	return out, err
}

// SetState writes a small persistent value.
func (q *Queue) SetState(name string, v []byte) error {
	return q.update(func(w *wtx) error {
		return w.txn.Set(append(append([]byte{}, prefixState...), name...), v)
	})
}

// DiskUsage returns the LSM and value-log sizes in bytes.
func (q *Queue) DiskUsage() (lsm, vlog int64) { return q.db.Size() }

func (q *Queue) gcLoop(interval time.Duration) {
	defer close(q.gcDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-q.gcStop:
			return
		case <-t.C:
			q.RunGC()
		}
	}
}

// RunGC runs value-log garbage collection until nothing is left to rewrite
// (badger's GC is manual). It returns how many files were rewritten.
func (q *Queue) RunGC() int {
	n := 0
	for {
		if err := q.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				q.log.Warn("value-log GC failed", "error", err)
			}
			return n
		}
		n++
	}
}

// groupSync batches syncs: every waiter whose commit happened before a
// sync started is released by that sync. A sync fsyncs the key file (new
// keys, and the zeroes written by the previous sync) and syncs badger at
// the same time: a waiter is released only when both are durable, and a
// crash in between leaves a record without its key or a key without its
// record, both unacknowledged and removed by the sweep at the next Open.
// Then it overwrites the slots of keys destroyed before it started with
// zeroes (their deletes are durable by then), which the next sync puts on
// disk. It also runs every FlushInterval while key slots wait, so a
// destroyed key is zeroed in the file within one interval and on disk
// within two.
type groupSync struct {
	db   *badger.DB
	keys *keyStore
	reqs chan chan error
	stop chan struct{}
	done chan struct{}
}

// FlushInterval is the period of the key file's flushes when no group
// commit runs (1 s): a destroyed key's slot is zeroed in the file within
// one interval and the zeroes are on disk within two, so the queue forgets
// an item within about 2 s after it left.
const FlushInterval = time.Second

func newGroupSync(db *badger.DB, keys *keyStore) *groupSync {
	g := &groupSync{db: db, keys: keys, reqs: make(chan chan error, 4096), stop: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g
}

func (g *groupSync) wait() error {
	ch := make(chan error, 1)
	select {
	case g.reqs <- ch:
	case <-g.stop:
		return errors.New("queue: closed")
	}
	return <-ch
}

func (g *groupSync) syncAll() error {
	dead := g.keys.takeDead()
	keysDone := make(chan error, 1)
	go func() { keysDone <- g.keys.sync() }()
	err := g.db.Sync()
	if kerr := <-keysDone; err == nil {
		err = kerr
	}
	if err != nil {
		g.keys.requeue(dead)
		return err
	}
	return g.keys.zeroDead(dead)
}

func (g *groupSync) loop() {
	defer close(g.done)
	batch := make([]chan error, 0, 256)
	tick := time.NewTicker(FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-tick.C:
			if g.keys.pending() {
				_ = g.syncAll() // retried at the next tick
			}
		case ch := <-g.reqs:
			batch = append(batch[:0], ch)
		drain:
			for {
				select {
				case ch := <-g.reqs:
					batch = append(batch, ch)
				default:
					break drain
				}
			}
			err := g.syncAll()
			for _, c := range batch {
				c <- err
			}
		}
	}
}

func (g *groupSync) close() {
	close(g.stop)
	<-g.done
	for {
		select {
		case ch := <-g.reqs:
			ch <- errors.New("queue: closed")
		default:
			return
		}
	}
}

type badgerLogger struct{ l hclog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Trace(fmt.Sprintf(f, a...)) }

// Tx is one queue transaction spanning several changes (a packet turned
// into its forward item together with its replay tag, fragments turned into
// a message). Its functions may run more than once (conflict retries): they
// must not have effects outside the transaction.
type Tx struct {
	w *wtx
}

// Do runs fn in one read-write transaction, retrying on conflicts.
func (q *Queue) Do(fn func(*Tx) error) error {
	return q.update(func(w *wtx) error { return fn(&Tx{w: w}) })
}

// Mark records key with a time to live and reports whether it was already
// recorded (and not expired): replay tags and the exit's message-id cache.
// badger's TTL has second resolution; the entry lives at least ttl.
func (t *Tx) Mark(key []byte, ttl time.Duration) (seen bool, err error) {
	k := append(append([]byte{}, prefixMark...), key...)
	if _, err := t.w.txn.Get(k); err == nil {
		return true, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return false, err
	}
	return false, t.w.txn.SetEntry(badger.NewEntry(k, nil).WithTTL(ttl + time.Second))
}

// Put stores a new item whose content is one blob (nil: none).
func (t *Tx) Put(it *Item, content []byte) error {
	if content != nil {
		id, err := t.w.putBlob(content)
		if err != nil {
			return err
		}
		it.Body, it.Header, it.Size = id, ID{}, int64(len(content))
	}
	return t.w.putItem(it)
}

// Insert stores a new message item with a header and a body blob.
func (t *Tx) Insert(it *Item, header, body []byte) error {
	var err error
	if it.Header, err = t.w.putBlob(header); err != nil {
		return err
	}
	if it.Body, err = t.w.putBlob(body); err != nil {
		return err
	}
	it.Size = int64(len(header) + len(body))
	return t.w.putItem(it)
}

// Delete removes an item and releases its blobs.
func (t *Tx) Delete(it *Item) error { return t.w.deleteItem(it) }

// Handover replaces item old by next, a new item (its own id and key)
// that takes over old's header and body blobs: their reference counts do
// not change and nothing is written but next's record. old's key is
// destroyed once the transaction has committed.
func (t *Tx) Handover(old, next *Item) error {
	if err := t.w.txn.Delete(key(prefixItem, old.ID)); err != nil {
		return err
	}
	t.w.dead = append(t.w.dead, old.ID)
	next.Header, next.Body, next.Size = old.Header, old.Body, old.Size
	return t.w.putItem(next)
}
