package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// migrate seals a queue written before values were sealed (item records
// as plain JSON, each blob one plain value under c/<blob id> with a plain
// uvarint reference count under n/<blob id>), one item per transaction, so
// that an upgrade loses no queued mail. The old plain values stay in
// badger's files until compaction and value-log GC: only mail queued after
// the upgrade gets the storage-forgets guarantee. It returns how many items
// it sealed.
func (q *Queue) migrate() (int, error) {
	var legacy []ID
	err := q.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefixItem
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var id ID
			k := it.Item().Key()
			if len(k) != len(prefixItem)+len(id) {
				continue
			}
			copy(id[:], k[len(prefixItem):])
			if err := it.Item().Value(func(v []byte) error {
				if !bytes.HasPrefix(v, []byte(sealMagic)) {
					legacy = append(legacy, id)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(legacy) == 0 {
		return 0, err
	}
	for _, id := range legacy {
		if err := q.migrateItem(id); err != nil {
			return 0, fmt.Errorf("sealing item %s of an older queue: %w", id, err)
		}
	}
	return len(legacy), nil
}

// migrateItem seals one legacy item and its blobs. The keys are made and
// synced before the sealed values are committed, so a crash at any point
// leaves either the plain item (migrated again at the next Open, with the
// same keys) or the sealed one with its keys on disk.
func (q *Queue) migrateItem(id ID) error {
	var it Item
	var blobs []ID
	err := q.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixItem, id))
		if err != nil {
			return err
		}
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &it) }); err != nil {
			return err
		}
		for _, b := range []ID{it.Header, it.Body} {
			if b == (ID{}) || slices.Contains(blobs, b) {
				continue
			}
			sealed, err := metaSealed(txn, b)
			if err != nil {
				return err
			}
			if !sealed {
				blobs = append(blobs, b)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range append([]ID{id}, blobs...) {
		if q.keys.key(o) == nil {
			if _, err := q.keys.alloc(o); err != nil {
				return err
			}
		}
	}
	if err := q.keys.sync(); err != nil {
		return err
	}
	return q.update(func(w *wtx) error {
		for _, b := range blobs {
			if err := w.migrateBlob(b); err != nil {
				return err
			}
		}
		return w.putItem(&it)
	})
}

// metaSealed reports whether blob's meta record is sealed (a blob shared
// with an item migrated before).
func metaSealed(txn *badger.Txn, blob ID) (bool, error) {
	item, err := txn.Get(key(prefixCount, blob))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sealed := false
	err = item.Value(func(v []byte) error {
		sealed = bytes.HasPrefix(v, []byte(sealMagic))
		return nil
	})
	return sealed, err
}

func (w *wtx) migrateBlob(blob ID) error {
	var refs uint64 = 1
	if item, err := w.txn.Get(key(prefixCount, blob)); err == nil {
		if err := item.Value(func(v []byte) error {
			if n, k := binary.Uvarint(v); k > 0 {
				refs = n
			}
			return nil
		}); err != nil {
			return err
		}
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return err
	}
	var data []byte
	item, err := w.txn.Get(key(prefixBlob, blob))
	switch {
	case err == nil:
		if data, err = item.ValueCopy(nil); err != nil {
			return err
		}
	case errors.Is(err, badger.ErrKeyNotFound): // an empty blob
	default:
		return err
	}
	if err := w.txn.Delete(key(prefixBlob, blob)); err != nil {
		return err
	}
	k := w.q.keys.key(blob)
	if k == nil {
		return fmt.Errorf("blob %s has no key", blob)
	}
	for i := uint32(0); i < chunks(int64(len(data))); i++ {
		c := data[int(i)*ChunkSize : min(len(data), int(i+1)*ChunkSize)]
		if err := w.txn.Set(chunkKey(blob, i), seal(k, blob, i, c)); err != nil {
			return err
		}
	}
	return w.txn.Set(key(prefixCount, blob), seal(k, blob, partMeta, blobMeta{refs: refs, length: int64(len(data))}.encode()))
}
