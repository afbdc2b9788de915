package nodes

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
)

// LoadOrCreateKey loads the Ed25519 key in file (PKCS#8 PEM "PRIVATE
// KEY", mode 0600, as the identity key), or creates it when missing (and
// its directory, 0700); created says which. A directory authority keeps
// its signing key this way, apart from the node's identity key. Errors:
// insecure permissions (ErrInsecurePermissions), or a file that is not
// one Ed25519 PKCS#8 key.
func LoadOrCreateKey(file string) (key ed25519.PrivateKey, created bool, err error) {
	dir, name := filepath.Split(file)
	dir = filepath.Clean(dir)
	if err := ensureDir(dir); err != nil {
		return nil, false, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	data, err := readSecret(file)
	if err == nil {
		block, rest := pem.Decode(data)
		if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, false, fmt.Errorf("nodes: %s: not one PEM \"PRIVATE KEY\" block", file)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("nodes: %s: %w", file, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, false, fmt.Errorf("nodes: %s: a %T, not an Ed25519 key", file, k)
		}
		return priv, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, err
	}
	data = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	zero(der)
	if err := writeNew(dir, name, data); err != nil {
		return nil, false, err
	}
	zero(data)
	return priv, true, nil
}
