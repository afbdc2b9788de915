package tor

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk/onion"
)

// OnionKey is an onion service's ed25519 key, kept as its 32-byte seed in
// a file of mode 0600 so the address stays the same across restarts.
type OnionKey struct {
	priv ed25519.PrivateKey
}

// LoadOrCreateOnionKey reads the seed in path, or creates the file (0600)
// with a new random key. A file readable by others is refused.
func LoadOrCreateOnionKey(path string) (*OnionKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(priv.Seed()); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		return &OnionKey{priv: priv}, nil
	}
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("onion key %s has mode %v: must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	if len(b) != ed25519.SeedSize {
		return nil, fmt.Errorf("onion key %s: %d bytes, want a %d-byte ed25519 seed", path, len(b), ed25519.SeedSize)
	}
	return &OnionKey{priv: ed25519.NewKeyFromSeed(b)}, nil
}

// Address is the service's v3 onion address ("<56 chars>.onion").
func (k *OnionKey) Address() string {
	return onion.Address(k.priv.Public().(ed25519.PublicKey))
}

// torBlob is the key in ADD_ONION's "ED25519-V3:" form: base64 of the
// 64-byte expanded secret key, SHA-512(seed) with the scalar clamped
// (RFC 8032 §5.1.5), as tor stores it in hs_ed25519_secret_key.
func (k *OnionKey) torBlob() string {
	h := sha512.Sum512(k.priv.Seed())
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	return "ED25519-V3:" + base64.StdEncoding.EncodeToString(h[:])
}

// Port maps a virtual port of the onion service to a local target.
type Port struct {
	Virtual int
	// Target is "127.0.0.1:port" (or "unix:/path").
	Target string
}

// Publish adds the onion service on c (ADD_ONION, control-spec §3.27)
// without Detach: the service lives as long as the control connection, so
// it disappears with mixmta. It subscribes c to HS_DESC events first, so
// WaitUploaded on c sees the upload; use c for nothing else afterwards.
func Publish(c *Control, key *OnionKey, ports []Port) (string, error) {
	if len(ports) == 0 {
		return "", errors.New("tor: onion service without ports")
	}
	var b strings.Builder
	b.WriteString("ADD_ONION " + key.torBlob() + " Flags=DiscardPK")
	for _, p := range ports {
		fmt.Fprintf(&b, " Port=%d,%s", p.Virtual, p.Target)
	}
	addr := key.Address()
	id := strings.TrimSuffix(addr, onion.Suffix)
	if _, err := c.Cmd("SETEVENTS HS_DESC"); err != nil {
		return "", err
	}
	lines, err := c.Cmd(b.String())
	if err != nil {
		return "", err
	}
	if !contains(lines, "ServiceID="+id) {
		return "", fmt.Errorf("%w: ADD_ONION answered %q, want ServiceID=%s", ErrControl, lines, id)
	}
	return addr, nil
}

// WaitUploaded waits up to timeout until tor reports the descriptor of
// the onion service addr (published on c) uploaded to an HSDir
// (HS_DESC UPLOADED): from then on clients can reach it. A timeout is an
// error, but the service stays published (tor keeps trying). It then
// unsubscribes c from events: nobody reads c any more, and tor would
// queue events for it without bound.
func WaitUploaded(c *Control, addr string, timeout time.Duration) error {
	id := strings.TrimSuffix(addr, onion.Suffix)
	_, err := c.WaitEvent(func(ev string) bool {
		f := strings.Fields(ev)
		return len(f) >= 3 && f[0] == "HS_DESC" && f[1] == "UPLOADED" && f[2] == id
	}, timeout)
	if _, uerr := c.Cmd("SETEVENTS"); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("tor: onion service %s: descriptor not uploaded within %s: %w", addr, timeout, err)
	}
	return nil
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}
