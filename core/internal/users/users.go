// Package users reads and writes the users file of an SMTP listener with
// AUTH: one "name:hash" line per user, "#" comments, mode 0600. A hash is
// either bcrypt ("$2a$", "$2b$", "$2y$") or Argon2id in the PHC string
// format of the reference implementation
// ("$argon2id$v=19$m=KiB,t=passes,p=lanes$salt$key", salt and key in
// unpadded base64; RFC 9106). The same Read serves `mixmta check-config`
// and the running listener, so the two always agree about a file.
package users

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Argon2id parameters of new hashes: OWASP's minimum for Argon2id (19 MiB,
// 2 passes, 1 lane), so a flood of AUTH attempts cannot exhaust a small
// node's memory; 16-byte salt, 32-byte key.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// Limits on the parameters of a hash read from a file: a hostile or
// mistyped file must not make one AUTH allocate gigabytes.
const (
	maxArgonMemory = 1 << 20 // KiB: 1 GiB
	maxArgonTime   = 64
)

// Hash is one user's password hash.
type Hash struct {
	raw string
	// argon2id parameters and values (unused for bcrypt)
	argon        bool
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// Parse checks a hash string. Errors say what is wrong without echoing it.
func Parse(s string) (Hash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		if _, err := bcrypt.Cost([]byte(s)); err != nil {
			return Hash{}, errors.New("malformed bcrypt hash")
		}
		return Hash{raw: s}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon(s)
	case strings.HasPrefix(s, "$argon2i$"), strings.HasPrefix(s, "$argon2d$"):
		return Hash{}, errors.New("only the argon2id variant is supported")
	}
	return Hash{}, errors.New("not a bcrypt ($2b$...) or argon2id ($argon2id$...) hash")
}

func parseArgon(s string) (Hash, error) {
	f := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(f) != 6 {
		return Hash{}, errors.New("malformed argon2id hash: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY")
	}
	if f[2] != "v=19" {
		return Hash{}, fmt.Errorf("argon2id version %q: only v=19 is supported", f[2])
	}
	h := Hash{raw: s, argon: true}
	var p uint32
	if _, err := fmt.Sscanf(f[3], "m=%d,t=%d,p=%d", &h.memory, &h.time, &p); err != nil {
		return Hash{}, errors.New("malformed argon2id parameters: want m=KiB,t=passes,p=lanes")
	}
	if h.memory < 8 || h.memory > maxArgonMemory || h.time < 1 || h.time > maxArgonTime || p < 1 || p > 255 {
		return Hash{}, fmt.Errorf("argon2id parameters out of range (m 8..%d KiB, t 1..%d, p 1..255)", maxArgonMemory, maxArgonTime)
	}
	h.threads = uint8(p)
	var err error
	if h.salt, err = base64.RawStdEncoding.DecodeString(f[4]); err != nil || len(h.salt) < 8 {
		return Hash{}, errors.New("malformed argon2id salt: want at least 8 bytes, unpadded base64")
	}
	if h.key, err = base64.RawStdEncoding.DecodeString(f[5]); err != nil || len(h.key) < 16 {
		return Hash{}, errors.New("malformed argon2id key: want at least 16 bytes, unpadded base64")
	}
	return h, nil
}

// Verify reports whether password matches h. The comparison of derived
// keys is constant-time.
func (h Hash) Verify(password string) bool {
	if !h.argon {
		return h.raw != "" && bcrypt.CompareHashAndPassword([]byte(h.raw), []byte(password)) == nil
	}
	k := argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(k, h.key) == 1
}

// String is the hash as written in the file.
func (h Hash) String() string { return h.raw }

// dummy is verified for unknown users so that timing does not tell which
// users exist.
var dummy, _ = Parse(HashArgon2id("mixmta-dummy-password"))

// VerifyUnknown spends the time a Verify takes, for an unknown user.
func VerifyUnknown(password string) { dummy.Verify(password) }

// HashArgon2id returns a new Argon2id hash of password with a random salt.
func HashArgon2id(password string) string {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		panic(err)
	}
	k := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(k))
}

// HashBcrypt returns a new bcrypt hash of password (cost 10, bcrypt.DefaultCost). bcrypt reads
// only the first 72 bytes of a password.
func HashBcrypt(password string) (string, error) {
	b, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(b), err
}

// Read reads a users file. Errors: the file is readable by group or
// others, a line is not "name:hash", a hash does not parse, a name
// repeats; each as FILE:LINE.
func Read(path string) (map[string]Hash, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %o: must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]Hash{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hs, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%s:%d: want name:hash", path, n)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s:%d: user %q appears twice", path, n, name)
		}
		h, err := Parse(hs)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %v", path, n, name, err)
		}
		out[name] = h
	}
	return out, sc.Err()
}

// Set writes name's hash into the users file at path, replacing the
// user's line or appending one; the file is created with mode 0600 and
// replaced atomically. Names may not contain ':' or white space.
func Set(path, name, hash string) error {
	if name == "" || strings.ContainsAny(name, ": \t\r\n") {
		return fmt.Errorf("user name %q: must be non-empty without ':' or white space", name)
	}
	if _, err := Parse(hash); err != nil {
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var out []string
	replaced := false
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if l == "" && len(out) == 0 && len(old) == 0 {
			continue
		}
		if n, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && n == name && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			l, replaced = name+":"+hash, true
		}
		out = append(out, l)
	}
	if !replaced {
		out = append(out, name+":"+hash)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
