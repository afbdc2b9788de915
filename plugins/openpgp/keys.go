package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// maxKeyFile bounds one key file (a key with many signatures is a few
// hundred KiB; a flooded one is refused rather than parsed).
const maxKeyFile = 1 << 20

// keyring finds a recipient's public keys in a directory: the file
// <address in lower case>.asc, armored or binary. Files are read through
// an os.Root, so no address can name a file outside the directory, and
// re-read when their size or modification time changes, so a key the
// operator adds (or replaces) is used for the next message without a
// restart.
type keyring struct {
	dir  string
	root *os.Root // nil until dir exists
	mu   sync.Mutex
	seen map[string]cachedKey
	now  func() time.Time
}

type cachedKey struct {
	size    int64
	modTime time.Time
	keys    openpgp.EntityList // the usable ones
	err     error
}

// errNoKey: the recipient has no key file.
var errNoKey = errors.New("no key")

// openKeyring opens dir. A directory that does not exist yet is no error
// (every recipient is then without a key): it is opened as soon as it
// appears, and `mixmta check-config` creates nothing.
func openKeyring(dir string) (*keyring, error) {
	k := &keyring{dir: dir, seen: map[string]cachedKey{}, now: time.Now}
	if _, err := k.openRoot(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return k, nil
}

// openRoot returns the directory's os.Root, opening it on first use.
func (k *keyring) openRoot() (*os.Root, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.root != nil {
		return k.root, nil
	}
	root, err := os.OpenRoot(k.dir)
	if err != nil {
		return nil, err
	}
	k.root = root
	return root, nil
}

// fileName returns the key file name for addr (ASCII letters in lower
// case), or "" when addr cannot be one safe file name (it then has no
// key).
func fileName(addr string) string {
	// ASCII letters only: Unicode case mapping would give the Kelvin sign
	// (U+212A) in "\u212Aarl@" the key of "karl@", another mailbox.
	a := strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, addr)
	if a == "" || len(a) > 254 || !utf8.ValidString(addr) || a[0] == '.' || !strings.Contains(a, "@") ||
		strings.ContainsAny(a, "/\\\x00") {
		return ""
	}
	return a + ".asc"
}

// lookup returns addr's usable encryption keys: not expired, not revoked,
// with an encryption-capable (sub)key. errNoKey when there is no file;
// another error when the file exists but holds no usable key.
func (k *keyring) lookup(addr string) (openpgp.EntityList, error) {
	name := fileName(addr)
	if name == "" {
		return nil, errNoKey
	}
	root, err := k.openRoot()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoKey
	}
	if err != nil {
		return nil, err
	}
	st, err := root.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoKey
	}
	if err != nil {
		return nil, err
	}
	// Whoever can replace a recipient's key can read that recipient's
	// mail from then on.
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("the key file is not a regular file or is writable by group or others (mode %04o)", st.Mode().Perm())
	}
	if dst, err := root.Stat("."); err == nil && dst.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("keys_dir is writable by group or others (mode %04o)", dst.Mode().Perm())
	}
	k.mu.Lock()
	c, ok := k.seen[name]
	k.mu.Unlock()
	if !ok || c.size != st.Size() || !c.modTime.Equal(st.ModTime()) {
		c = cachedKey{size: st.Size(), modTime: st.ModTime()}
		c.keys, c.err = read(root, name)
		k.mu.Lock()
		k.seen[name] = c
		k.mu.Unlock()
	}
	if c.err != nil {
		return nil, c.err
	}
	// Expiry is checked per message: a key may expire while cached.
	now := k.now()
	var usable openpgp.EntityList
	for _, e := range c.keys {
		if _, ok := e.EncryptionKey(now); ok {
			usable = append(usable, e)
		}
	}
	if len(usable) == 0 {
		return nil, errors.New("the key file holds no valid encryption key (expired, revoked or sign-only)")
	}
	return usable, nil
}

func read(root *os.Root, name string) (openpgp.EntityList, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFile {
		return nil, errors.New("key file larger than 1 MiB")
	}
	var r io.Reader = bytes.NewReader(b)
	if bytes.Contains(b[:min(len(b), 1024)], []byte("-----BEGIN PGP")) {
		block, err := armor.Decode(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("armor: %w", err)
		}
		if block.Type != openpgp.PublicKeyType {
			return nil, fmt.Errorf("armored block is %q, want a public key", block.Type)
		}
		r = block.Body
	}
	keys, err := openpgp.ReadKeyRing(r)
	if err != nil {
		return nil, err
	}
	for _, e := range keys {
		if e.PrivateKey != nil {
			return nil, errors.New("the key file holds a secret key; store only public keys")
		}
	}
	return keys, nil
}
