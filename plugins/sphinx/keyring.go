package main

import (
	"bytes"
	"crypto/hpke"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// keyring holds this node's private mix keys: the mixer is the one process
// that does (sdk.MixState). Each key is read from its file in the core's
// key directory the first time a MixState lists it, kept in a mixkey.Key,
// and wiped as soon as a MixState no longer lists it (the core drops a key
// from the state when its validity ends, before it deletes the file). Keys
// are never copied: Mix uses them in place under the read lock, so a wipe
// never races an unwrap.
type keyring struct {
	mu   sync.RWMutex
	keys map[uint64]*mixkey.Key // by epoch
	// kem holds the X-Wing private key expanded from each seed in keys
	// (KEM format only). Go keeps it in memory it gives no way to zero: it
	// is dropped with its seed.
	kem map[uint64]hpke.PrivateKey
}

// update makes the ring hold exactly the keys listed in own, reading the
// ones it does not hold yet from dir. It fails, changing nothing, when a
// key file is missing or unreadable or holds a key whose public half is
// not the one listed or whose algorithm is not kind.
func (r *keyring) update(dir string, own []sdk.EpochKey, kind mixkey.Kind) error {
	r.mu.RLock()
	var missing []sdk.EpochKey
	for _, k := range own {
		if have := r.keys[k.Epoch]; have == nil || !bytes.Equal(have.Public(), k.Public) {
			missing = append(missing, k)
		}
	}
	r.mu.RUnlock()

	loaded := map[uint64]*mixkey.Key{}
	loadedKEM := map[uint64]hpke.PrivateKey{}
	fail := func(err error) error {
		for _, k := range loaded {
			k.Wipe()
		}
		return err
	}
	for _, k := range missing {
		if dir == "" {
			return fail(fmt.Errorf("no key directory given for own key of epoch %d", k.Epoch))
		}
		path := filepath.Join(dir, "mix-"+strconv.FormatUint(k.Epoch, 10)+".key")
		key, meta, err := mixkey.ReadFile(path)
		if err != nil {
			return fail(fmt.Errorf("own key for epoch %d: %w", k.Epoch, err))
		}
		loaded[k.Epoch] = key
		if meta.Epoch != k.Epoch || !bytes.Equal(meta.Public, k.Public) {
			return fail(fmt.Errorf("own key for epoch %d: the key file %s holds another key (epoch %d)", k.Epoch, path, meta.Epoch))
		}
		if key.Kind() != kind {
			return fail(fmt.Errorf("own key for epoch %d: the key file %s holds an %s key, sphinx_format is %s", k.Epoch, path, key.Kind(), kind))
		}
		if kind == mixkey.XWing {
			priv, _, err := sphinx.NewKEMPrivateKey(key.Scalar()[:])
			if err != nil {
				return fail(fmt.Errorf("own key for epoch %d: %w", k.Epoch, err))
			}
			loadedKEM[k.Epoch] = priv
		}
	}

	listed := map[uint64]bool{}
	for _, k := range own {
		listed[k.Epoch] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil {
		r.keys = map[uint64]*mixkey.Key{}
		r.kem = map[uint64]hpke.PrivateKey{}
	}
	for e, k := range r.keys {
		if !listed[e] || loaded[e] != nil {
			k.Wipe()
			delete(r.keys, e)
			delete(r.kem, e)
		}
	}
	for e, k := range loaded {
		r.keys[e] = k
	}
	for e, k := range loadedKEM {
		r.kem[e] = k
	}
	return nil
}

// held is the number of keys in the ring.
func (r *keyring) held() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.keys)
}
