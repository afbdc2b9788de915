package nodes

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// Epoch is the epoch number of t: floor(unix seconds of t / length), with
// length a whole number of seconds (a fraction of a second is ignored).
// Times before 1970 are epoch 0. It panics if length is below 1 s.
func Epoch(t time.Time, length time.Duration) uint64 {
	l := secondsOf(length)
	s := t.Unix()
	if s < 0 {
		return 0
	}
	return uint64(s) / uint64(l)
}

// EpochStart is the first instant of epoch e: e*length unix seconds, UTC.
// It panics if length is below 1 s.
func EpochStart(e uint64, length time.Duration) time.Time {
	return time.Unix(int64(e)*secondsOf(length), 0).UTC()
}

func secondsOf(length time.Duration) int64 {
	l := int64(length / time.Second)
	if l < 1 {
		panic("nodes: epoch length below 1 s")
	}
	return l
}

// KeyStore holds this node's X25519 mix keys (RFC 7748), one per epoch, in
// the key directory as mix-<epoch>.key (see the package comment). In
// memory it keeps only their public halves and validity: a private key
// exists here from its generation to its file's write, then it is wiped;
// the mixer reads it from the file (sdk.MixState.KeyDir). It is
// safe for concurrent use, and several KeyStores (in several processes) may
// share a directory: changes happen under the directory's flock.
//
// A daemon calls, every few seconds and at least once per epoch:
//
//	keys := ks.Keys(now)   // hand these to the mixer (sdk.MixState) first,
//	ks.Ensure(now)         // then delete expired key files, create new ones
//
// so that a key leaves the mixer's memory before its file is deleted.
type KeyStore struct {
	// kind is the algorithm of every key: the network's Sphinx format.
	kind   mixkey.Kind
	dir    string
	length time.Duration
	grace  time.Duration
	// ahead is how many epochs after the current one have keys (>= 1).
	ahead uint64
	// dropBeyond: Ensure also wipes keys of epochs after current+ahead.
	dropBeyond bool

	mu   sync.RWMutex
	keys map[uint64]*ownKey
}

// ownKey is one of this node's mix keys as the core knows it: public half
// and validity only. The private half is in its file alone; the mixer
// reads it from there (sdk.MixState.KeyDir).
type ownKey struct {
	epoch     uint64
	pub       []byte
	notBefore time.Time
	notAfter  time.Time
}

// Changes says what Ensure did: the epochs whose key it created and the
// epochs whose key file it deleted, ascending.
type Changes struct {
	Created, Deleted []uint64
}

// Open opens the key directory dir, creating it (0700) if needed, and loads
// the mix keys in it without changing any key file (a directory of ours
// open to group or others is set to 0700). epochLength is a whole number
// of seconds, at least 1 s; grace is a whole number of seconds in [0,
// epochLength). Errors: bad durations, a key file open to group or others
// or a directory of another user open to them (ErrInsecurePermissions), an
// unreadable key file.
func Open(dir string, epochLength, grace time.Duration) (*KeyStore, error) {
	return OpenFormat(dir, epochLength, grace, mixkey.X25519Kind)
}

// OpenFormat is Open for a network of Sphinx format kind: Ensure creates
// keys of that algorithm (X25519, or X-Wing for the KEM format), and a key
// file of the other algorithm in dir is an error (ErrWrongFormat), here and
// in Ensure: a node never serves two formats.
func OpenFormat(dir string, epochLength, grace time.Duration, kind mixkey.Kind) (*KeyStore, error) {
	if epochLength < time.Second || epochLength%time.Second != 0 {
		return nil, fmt.Errorf("nodes: epoch length %v: want a whole number of seconds, at least 1s", epochLength)
	}
	if grace < 0 || grace%time.Second != 0 || grace >= epochLength {
		return nil, fmt.Errorf("nodes: grace %v: want a whole number of seconds, at least 0 and below the epoch length %v", grace, epochLength)
	}
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	s := &KeyStore{kind: kind, dir: dir, length: epochLength, grace: grace, ahead: 1}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s.keys, err = s.load()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// SetAhead makes Ensure create keys for n epochs after the current one
// (default 1, the next epoch only), so a descriptor exported now stays
// usable for n epochs: operators then redistribute nodes files once per n
// epochs instead of every epoch. Keys of future epochs sit on disk until
// their epoch; forward secrecy for past epochs is unchanged. n < 1 is 1.
func (s *KeyStore) SetAhead(n int) {
	s.mu.Lock()
	s.ahead = uint64(max(n, 1))
	s.mu.Unlock()
}

// DropBeyondAhead makes Ensure also wipe and delete the keys of epochs
// after the current one + ahead (reported in Changes.Deleted): for a node
// that publishes its descriptor to directory authorities every epoch, so
// that no descriptor handed around earlier still names such a key, and
// keys a larger keys_ahead created before (with a nodes file) do not stay
// on disk as private keys for future traffic.
func (s *KeyStore) DropBeyondAhead() {
	s.mu.Lock()
	s.dropBeyond = true
	s.mu.Unlock()
}

// Dir is the key directory.
func (s *KeyStore) Dir() string { return s.dir }

// Format is the algorithm of the keys: the network's Sphinx format.
func (s *KeyStore) Format() mixkey.Kind { return s.kind }

// EpochLength is the epoch length given to Open.
func (s *KeyStore) EpochLength() time.Duration { return s.length }

// Grace is the grace period given to Open.
func (s *KeyStore) Grace() time.Duration { return s.grace }

// Ensure brings the directory to its state at now, idempotently: it wipes
// and deletes every mix key file whose validity has ended (not_after <=
// now), after DropBeyondAhead those of epochs after the current + ahead,
// and any temporary file left by a crash, then creates the keys of the
// current and the next epoch if they are missing. It reloads the keys from
// the directory, so keys created by another process are picked up. Errors:
// a key file that does not parse or is open to group or others (nothing is
// deleted then), a write error.
func (s *KeyStore) Ensure(now time.Time) (Changes, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockDir(s.dir)
	if err != nil {
		return Changes{}, err
	}
	defer unlock()
	var ch Changes
	keys, err := s.load()
	if err != nil {
		return ch, err
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return ch, fmt.Errorf("nodes: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			// We hold the lock, so no one is writing it: a crash left it.
			if err := wipe(filepath.Join(s.dir, e.Name())); err != nil {
				return ch, err
			}
		}
	}
	cur := Epoch(now, s.length)
	for e, k := range keys {
		if now.Before(k.notAfter) && !(s.dropBeyond && e > cur+s.ahead) {
			continue
		}
		if err := wipe(filepath.Join(s.dir, mixKeyName(e))); err != nil {
			return ch, err
		}
		delete(keys, e)
		ch.Deleted = append(ch.Deleted, e)
	}
	if len(ch.Deleted) > 0 {
		if err := syncDir(s.dir); err != nil {
			return ch, err
		}
	}
	for e := cur; e <= cur+s.ahead; e++ {
		if keys[e] != nil {
			continue
		}
		k, err := s.create(e)
		if err != nil {
			return ch, err
		}
		keys[e] = k
		ch.Created = append(ch.Created, e)
	}
	slices.Sort(ch.Deleted)
	s.keys = keys
	return ch, nil
}

// Keys returns this node's mix keys (public halves) that are valid at now
// or start within the next epoch, by epoch: the previous epoch's while in
// its grace period, the current and the next one: the keys a mixer needs.
// Only keys loaded by Open or the last Ensure are returned.
func (s *KeyStore) Keys(now time.Time) []sdk.EpochKey {
	return s.keysUntil(now, 2)
}

// NotAfter is the end of the validity of this node's key of epoch e, as
// its file says (not as the current epoch length would compute it), and
// whether that key is loaded: replay tags must live that long whatever the
// configuration says now.
func (s *KeyStore) NotAfter(e uint64) (time.Time, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.keys[e]
	if k == nil {
		return time.Time{}, false
	}
	return k.notAfter, true
}

// Published returns the keys to put in this node's descriptor: those of
// Keys plus the ones created ahead (SetAhead).
func (s *KeyStore) Published(now time.Time) []sdk.EpochKey {
	s.mu.RLock()
	ahead := s.ahead
	s.mu.RUnlock()
	return s.keysUntil(now, ahead+1)
}

func (s *KeyStore) keysUntil(now time.Time, epochs uint64) []sdk.EpochKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	horizon := EpochStart(Epoch(now, s.length)+epochs, s.length)
	var out []sdk.EpochKey
	for _, k := range s.keys {
		if !now.Before(k.notAfter) || !k.notBefore.Before(horizon) {
			continue
		}
		out = append(out, sdk.EpochKey{
			Epoch:     k.epoch,
			Public:    slices.Clone(k.pub),
			NotBefore: k.notBefore,
			NotAfter:  k.notAfter,
		})
	}
	slices.SortFunc(out, func(a, b sdk.EpochKey) int { return cmp.Compare(a.Epoch, b.Epoch) })
	return out
}

// load reads every mix-<epoch>.key of the directory (under the lock).
func (s *KeyStore) load() (map[uint64]*ownKey, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	keys := map[uint64]*ownKey{}
	for _, e := range entries {
		epoch, ok := parseMixKeyName(e.Name())
		if !ok {
			continue
		}
		k, err := readMixKey(filepath.Join(s.dir, e.Name()), epoch, s.kind)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		keys[epoch] = k
	}
	return keys, nil
}

// create generates the key of epoch e and writes it. The private key
// exists in this process only between its generation and the write: its
// buffers are wiped before create returns.
func (s *KeyStore) create(e uint64) (*ownKey, error) {
	generate := mixkey.Generate
	if s.kind == mixkey.XWing {
		generate = mixkey.GenerateXWing
	}
	priv, err := generate(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("nodes: mix key: %w", err)
	}
	defer priv.Wipe()
	k := &ownKey{
		epoch:     e,
		pub:       priv.Public(),
		notBefore: EpochStart(e, s.length),
		notAfter:  EpochStart(e+1, s.length).Add(s.grace),
	}
	data := mixkey.Encode(priv, mixkey.Meta{Epoch: e, NotBefore: k.notBefore, NotAfter: k.notAfter})
	defer zero(data)
	if err := writeNew(s.dir, mixKeyName(e), data); err != nil {
		return nil, err
	}
	return k, nil
}

func mixKeyName(e uint64) string { return "mix-" + strconv.FormatUint(e, 10) + ".key" }

func parseMixKeyName(name string) (uint64, bool) {
	num, ok := strings.CutPrefix(name, "mix-")
	if !ok {
		return 0, false
	}
	num, ok = strings.CutSuffix(num, ".key")
	if !ok {
		return 0, false
	}
	e, err := strconv.ParseUint(num, 10, 64)
	if err != nil || mixKeyName(e) != name {
		return 0, false
	}
	return e, true
}

// readMixKey reads the public half of one mix key file (the private half
// is not decoded, see mixkey.DecodePublic) and checks that its Epoch
// header matches its name and its algorithm is kind.
func readMixKey(path string, epoch uint64, kind mixkey.Kind) (*ownKey, error) {
	data, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	defer zero(data)
	m, err := mixkey.DecodePublic(data)
	if err != nil {
		return nil, fmt.Errorf("nodes: mix key file %s: %w", path, err)
	}
	if m.Epoch != epoch {
		return nil, fmt.Errorf("nodes: mix key file %s: Epoch header %d does not match the file name", path, m.Epoch)
	}
	if m.Kind != kind {
		return nil, fmt.Errorf("nodes: mix key file %s: %w: it holds an %s key and the sphinx format is %s (a node serves one format; move the other format's key files out of the key directory)",
			path, ErrWrongFormat, m.Kind, kind)
	}
	return &ownKey{epoch: epoch, pub: m.Public, notBefore: m.NotBefore, notAfter: m.NotAfter}, nil
}
