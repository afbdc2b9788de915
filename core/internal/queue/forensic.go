package queue

import (
	"bytes"
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
)

// Recovered is what Recover got out of a directory.
type Recovered struct {
	// Keys is the number of key slots found (non-zero, any CRC).
	Keys int
	// Sealed is the number of sealed values found in raw file bytes.
	Sealed int
	// Opened holds the plaintext of every sealed value some key opened.
	Opened [][]byte
}

// Recover does what an adversary holding a node's disk can do with its
// queues: it reads every key slot of every key file under dir (zeroed slots
// hold nothing; slots with a bad CRC are tried too), finds every sealed
// value in the raw bytes of every file under dir (badger's value log,
// memtables, tables, whatever is there), and tries every key on every
// value. It is used by tests to prove that a message that left can no
// longer be read; it never changes a file.
func Recover(dir string) (Recovered, error) {
	var r Recovered
	var keys [][]byte
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files = append(files, p)
		if d.Name() != keyFileName {
			return nil
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var zero [slotSize]byte
		for i := 0; (i+1)*slotSize <= len(raw); i++ {
			s := raw[i*slotSize : (i+1)*slotSize]
			if !bytes.Equal(s, zero[:]) {
				keys = append(keys, append([]byte(nil), s[16:48]...))
			}
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	r.Keys = len(keys)
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			return r, err
		}
		for off := 0; ; {
			i := bytes.Index(raw[off:], []byte(sealMagic))
			if i < 0 {
				break
			}
			v := raw[off+i:]
			off += i + 1
			if len(v) < sealAADLen+sealNonceLen {
				continue
			}
			n := int(binary.BigEndian.Uint32(v[24:]))
			if n < sealTagLen || n > len(v)-sealAADLen-sealNonceLen {
				continue
			}
			v = v[:sealAADLen+sealNonceLen+n]
			r.Sealed++
			for _, k := range keys {
				plain, err := newAEAD(k).Open(nil, v[sealAADLen:sealAADLen+sealNonceLen], v[sealAADLen+sealNonceLen:], v[:sealAADLen])
				if err == nil {
					r.Opened = append(r.Opened, plain)
					break
				}
			}
		}
	}
	return r, nil
}

// Contains reports whether any opened plaintext contains token.
func (r Recovered) Contains(token []byte) bool {
	for _, p := range r.Opened {
		if bytes.Contains(p, token) {
			return true
		}
	}
	return false
}
