// Package queue is mixmta's durable queue: every message and every pipeline
// item lives in one badger database, every state change is one transaction,
// and an accepted message is synced to disk before the SMTP 250 (sessions
// share syncs: group commit). Items are indexed in memory and rebuilt from
// disk at start, so on restart each item resumes where it was.
//
// Layout (keys):
//
//	i/<item id 16 B>  item record (JSON, see Item)
//	c/<blob id 16 B>  content blob: a header section, a body or a packet
//	n/<blob id 16 B>  reference count of the blob (uvarint)
//	s/<name>          small persistent state owned by the core (counters)
package queue

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
// badger is tuned for a small footprint (notes/go-libraries.md): 8 MiB
// memtables, values above 1 KiB in the value log, 64 MiB value-log files,
// no compression, small caches. Writes are not synced individually: Accept
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
	q := &Queue{db: db, log: log, syncer: newGroupSync(db), gcStop: make(chan struct{}), gcDone: make(chan struct{})}
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
		if e := q.db.Sync(); e != nil {
			err = e
		}
		if e := q.db.Close(); e != nil && err == nil {
			err = e
		}
	})
	return err
}

// Sync waits until every transaction committed before the call is on disk.
// Concurrent callers share one fsync (group commit).
func (q *Queue) Sync() error { return q.syncer.wait() }

// update runs fn in a read-write transaction, retrying on conflicts.
func (q *Queue) update(fn func(txn *badger.Txn) error) error {
	for attempt := 0; ; attempt++ {
		err := q.db.Update(fn)
		if errors.Is(err, badger.ErrConflict) && attempt < 100 {
			continue
		}
		return err
	}
}

func putItem(txn *badger.Txn, it *Item) error {
	b, err := json.Marshal(it)
	if err != nil {
		return err
	}
	return txn.Set(key(prefixItem, it.ID), b)
}

func addRef(txn *badger.Txn, blob ID, delta int) error {
	if blob == (ID{}) {
		return nil
	}
	k := key(prefixCount, blob)
	var n uint64
	item, err := txn.Get(k)
	switch {
	case err == nil:
		if err := item.Value(func(v []byte) error {
			var k int
			n, k = binary.Uvarint(v)
			if k <= 0 {
				return fmt.Errorf("queue: corrupt refcount of blob %s", blob)
			}
			return nil
		}); err != nil {
			return err
		}
	case errors.Is(err, badger.ErrKeyNotFound):
	default:
		return err
	}
	next := int64(n) + int64(delta)
	if next <= 0 {
		if err := txn.Delete(k); err != nil {
			return err
		}
		return txn.Delete(key(prefixBlob, blob))
	}
	return txn.Set(k, binary.AppendUvarint(nil, uint64(next)))
}

func putBlob(txn *badger.Txn, data []byte) (ID, error) {
	id := NewID()
	if err := txn.Set(key(prefixBlob, id), data); err != nil {
		return id, err
	}
	return id, txn.Set(key(prefixCount, id), binary.AppendUvarint(nil, 1))
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
	err := q.update(func(txn *badger.Txn) error {
		var err error
		if it.Header, err = putBlob(txn, header); err != nil {
			return err
		}
		if it.Body, err = putBlob(txn, body); err != nil {
			return err
		}
		return putItem(txn, it)
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
	err := q.update(func(txn *badger.Txn) error {
		var err error
		if it.Body, err = putBlob(txn, content); err != nil {
			return err
		}
		it.Header = ID{}
		return putItem(txn, it)
	})
	if err != nil {
		return fmt.Errorf("queue: put: %w", err)
	}
	return q.Sync()
}

// Blob returns a copy of a content blob; the zero ID gives nil.
func (q *Queue) Blob(id ID) ([]byte, error) {
	if id == (ID{}) {
		return nil, nil
	}
	var out []byte
	err := q.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixBlob, id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	return out, err
}

// Update rewrites an item's record (stage, envelope, send_after, attempts).
func (q *Queue) Update(it *Item) error {
	return q.update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key(prefixItem, it.ID)); err != nil {
			if errors.Is(err, badger.ErrKeyNotFound) {
				return ErrNotFound
			}
			return err
		}
		return putItem(txn, it)
	})
}

// Replace is one transformation step in one transaction: the item's
// header and/or body are replaced (nil means unchanged; the old blob loses
// a reference) and the record is rewritten (it.Stage etc. as set by the
// caller).
func (q *Queue) Replace(it *Item, header, body []byte) error {
	next := *it
	err := q.update(func(txn *badger.Txn) error {
		next = *it
		if header != nil {
			id, err := putBlob(txn, header)
			if err != nil {
				return err
			}
			if err := addRef(txn, it.Header, -1); err != nil {
				return err
			}
			next.Header = id
		}
		if body != nil {
			id, err := putBlob(txn, body)
			if err != nil {
				return err
			}
			if err := addRef(txn, it.Body, -1); err != nil {
				return err
			}
			next.Body = id
		}
		return putItem(txn, &next)
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
	err := q.update(func(txn *badger.Txn) error {
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
				id, err := putBlob(txn, c.Content)
				if err != nil {
					return err
				}
				it.Body, it.Size = id, int64(len(c.Content))
			} else {
				it.Header, it.Body, it.Size = parent.Header, parent.Body, parent.Size
				if err := addRef(txn, it.Header, 1); err != nil {
					return err
				}
				if err := addRef(txn, it.Body, 1); err != nil {
					return err
				}
			}
			if err := putItem(txn, it); err != nil {
				return err
			}
			out = append(out, it)
		}
		return deleteItem(txn, parent)
	})
	if err != nil {
		return nil, fmt.Errorf("queue: split: %w", err)
	}
	return out, nil
}

func deleteItem(txn *badger.Txn, it *Item) error {
	if err := txn.Delete(key(prefixItem, it.ID)); err != nil {
		return err
	}
	if err := addRef(txn, it.Header, -1); err != nil {
		return err
	}
	return addRef(txn, it.Body, -1)
}

// Delete removes an item (delivered, or failed for good) and releases its
// blobs in one transaction. Deleting a missing item is not an error.
func (q *Queue) Delete(it *Item) error {
	return q.update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key(prefixItem, it.ID)); errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		return deleteItem(txn, it)
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
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &it) })
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
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &item) }); err != nil {
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
	return q.update(func(txn *badger.Txn) error {
		return txn.Set(append(append([]byte{}, prefixState...), name...), v)
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

// groupSync batches db.Sync calls: every waiter whose commit happened
// before a sync started is released by that sync.
type groupSync struct {
	db   *badger.DB
	reqs chan chan error
	stop chan struct{}
	done chan struct{}
}

func newGroupSync(db *badger.DB) *groupSync {
	g := &groupSync{db: db, reqs: make(chan chan error, 4096), stop: make(chan struct{}), done: make(chan struct{})}
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

func (g *groupSync) loop() {
	defer close(g.done)
	batch := make([]chan error, 0, 256)
	for {
		select {
		case <-g.stop:
			return
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
			err := g.db.Sync()
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
	txn *badger.Txn
}

// Do runs fn in one read-write transaction, retrying on conflicts.
func (q *Queue) Do(fn func(*Tx) error) error {
	return q.update(func(txn *badger.Txn) error { return fn(&Tx{txn: txn}) })
}

// Mark records key with a time to live and reports whether it was already
// recorded (and not expired): replay tags and the exit's message-id cache.
// badger's TTL has second resolution; the entry lives at least ttl.
func (t *Tx) Mark(key []byte, ttl time.Duration) (seen bool, err error) {
	k := append(append([]byte{}, prefixMark...), key...)
	if _, err := t.txn.Get(k); err == nil {
		return true, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return false, err
	}
	return false, t.txn.SetEntry(badger.NewEntry(k, nil).WithTTL(ttl + time.Second))
}

// Put stores a new item whose content is one blob (nil: none).
func (t *Tx) Put(it *Item, content []byte) error {
	if content != nil {
		id, err := putBlob(t.txn, content)
		if err != nil {
			return err
		}
		it.Body, it.Header, it.Size = id, ID{}, int64(len(content))
	}
	return putItem(t.txn, it)
}

// Insert stores a new message item with a header and a body blob.
func (t *Tx) Insert(it *Item, header, body []byte) error {
	var err error
	if it.Header, err = putBlob(t.txn, header); err != nil {
		return err
	}
	if it.Body, err = putBlob(t.txn, body); err != nil {
		return err
	}
	it.Size = int64(len(header) + len(body))
	return putItem(t.txn, it)
}

// Delete removes an item and releases its blobs.
func (t *Tx) Delete(it *Item) error { return deleteItem(t.txn, it) }
