package nodes

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/mixmta/mixmta/sdk"
)

// IdentityFile is the name of the identity key in the key directory.
const IdentityFile = "identity.key"

// Identity is a node's long-term Ed25519 identity key (RFC 8032). It signs
// the node's mix keys and descriptor, and is the key of the node's TLS
// certificate in the mix transport.
type Identity struct {
	priv ed25519.PrivateKey
	id   sdk.NodeID
}

// NewIdentity wraps an Ed25519 private key (64 bytes, as from
// ed25519.GenerateKey). It panics on a key of the wrong size.
func NewIdentity(priv ed25519.PrivateKey) *Identity {
	if len(priv) != ed25519.PrivateKeySize {
		panic("nodes: Ed25519 private key is not 64 bytes")
	}
	return &Identity{priv: priv, id: NodeIDOf(priv.Public().(ed25519.PublicKey))}
}

// NodeIDOf is the node id of an identity public key: SHA-256 of its 32
// bytes.
func NodeIDOf(pub ed25519.PublicKey) sdk.NodeID { return sha256.Sum256(pub) }

// ID is SHA-256 of the public key.
func (i *Identity) ID() sdk.NodeID { return i.id }

// Public is the 32-byte Ed25519 public key.
func (i *Identity) Public() ed25519.PublicKey { return i.priv.Public().(ed25519.PublicKey) }

// PrivateKey is the 64-byte Ed25519 private key (a crypto.Signer, for the
// transport's TLS certificate). Do not copy it elsewhere.
func (i *Identity) PrivateKey() ed25519.PrivateKey { return i.priv }

// LoadIdentity reads DIR/identity.key (PKCS#8 PEM, Ed25519). Errors: the
// file is missing (wraps fs.ErrNotExist: run `mixmta keygen`), readable or
// writable by group or others, or DIR is open to them and owned by another
// user (ErrInsecurePermissions; DIR of ours is set to 0700), or the file
// does not hold an Ed25519 PKCS#8 key.
func LoadIdentity(dir string) (*Identity, error) {
	if err := checkDir(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nodes: no key directory %s (run mixmta keygen): %w", dir, fs.ErrNotExist)
	} else if err != nil {
		return nil, err
	}
	return readIdentity(dir)
}

func readIdentity(dir string) (*Identity, error) {
	path := filepath.Join(dir, IdentityFile)
	data, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nodes: no identity key %s (run mixmta keygen): %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("nodes: %s: not one PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("nodes: %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("nodes: %s: a %T, not an Ed25519 key", path, k)
	}
	return NewIdentity(priv), nil
}

// CreateIdentity generates a new identity and writes DIR/identity.key
// (0600), creating DIR (0700) if needed. It never overwrites: if the file
// exists it returns ErrIdentityExists.
func CreateIdentity(dir string) (*Identity, error) {
	id, created, err := LoadOrCreateIdentity(dir)
	if err == nil && !created {
		return nil, fmt.Errorf("nodes: %s: %w", filepath.Join(dir, IdentityFile), ErrIdentityExists)
	}
	return id, err
}

// LoadOrCreateIdentity loads DIR/identity.key, or creates it (and DIR,
// 0700) when missing; created says which. Errors as LoadIdentity.
func LoadOrCreateIdentity(dir string) (id *Identity, created bool, err error) {
	if err := ensureDir(dir); err != nil {
		return nil, false, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	id, err = readIdentity(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		return id, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("nodes: identity: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("nodes: identity: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	zero(der)
	if err := writeNew(dir, IdentityFile, data); err != nil {
		return nil, false, err
	}
	zero(data)
	return NewIdentity(priv), true, nil
}
