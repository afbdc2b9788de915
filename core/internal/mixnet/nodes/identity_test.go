package nodes

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityIsPKCS8PEMMode0600AndNodeIDIsSHA256OfPublicKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "keys")
	id, err := CreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, IdentityFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("identity.key mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || len(rest) != 0 {
		t.Fatalf("identity.key is not one PEM PRIVATE KEY block: %q", data)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok || !bytes.Equal(priv.Public().(ed25519.PublicKey), id.Public()) {
		t.Fatalf("identity.key holds %T, not this identity's Ed25519 key", k)
	}
	if want := sha256.Sum256(id.Public()); id.ID() != want {
		t.Errorf("node id %s, want SHA-256 of the public key %x", id.ID(), want)
	}
	again, err := LoadIdentity(dir)
	if err != nil || again.ID() != id.ID() {
		t.Errorf("LoadIdentity: %v, id %v, want %v", err, again, id.ID())
	}
}

func TestCreateIdentityNeverOverwritesAnExistingOne(t *testing.T) {
	dir := t.TempDir()
	first, err := CreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, IdentityFile))
	if _, err := CreateIdentity(dir); !errors.Is(err, ErrIdentityExists) {
		t.Errorf("second CreateIdentity: err = %v, want ErrIdentityExists", err)
	}
	id, created, err := LoadOrCreateIdentity(dir)
	if err != nil || created || id.ID() != first.ID() {
		t.Errorf("LoadOrCreateIdentity on an existing key: created=%v err=%v, same id=%v", created, err, err == nil && id.ID() == first.ID())
	}
	after, _ := os.ReadFile(filepath.Join(dir, IdentityFile))
	if !bytes.Equal(before, after) {
		t.Error("identity.key changed")
	}
}

func TestLoadIdentityRefusesKeyFileOpenToGroupOrOthers(t *testing.T) {
	cases := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o644, false},
		{0o640, false},
		{0o604, false},
		{0o660, false},
		{0o602, false},
	}
	dir := t.TempDir()
	if _, err := CreateIdentity(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, IdentityFile)
	for _, c := range cases {
		os.Chmod(path, c.mode)
		_, err := LoadIdentity(dir)
		if c.ok {
			if err != nil {
				t.Errorf("mode %04o: %v, want it loaded", c.mode, err)
			}
			continue
		}
		if !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("mode %04o: err = %v, want ErrInsecurePermissions telling to chmod 600 the file", c.mode, err)
		}
		if _, _, err := LoadOrCreateIdentity(dir); !errors.Is(err, ErrInsecurePermissions) {
			t.Errorf("LoadOrCreateIdentity, mode %04o: err = %v, want ErrInsecurePermissions (not a new key)", c.mode, err)
		}
	}
}

func TestLoadIdentityRefusesSymlinkAndClosesAnOpenDirectory(t *testing.T) {
	dir := t.TempDir()
	CreateIdentity(dir)
	other := t.TempDir()
	os.Chmod(other, 0o755)
	os.Rename(filepath.Join(dir, IdentityFile), filepath.Join(dir, "real.key"))
	os.Symlink(filepath.Join(dir, "real.key"), filepath.Join(other, IdentityFile))
	if _, err := LoadIdentity(other); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("identity.key as a symbolic link: err = %v, want ErrInsecurePermissions", err)
	}
	if fi, _ := os.Stat(other); fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory of ours with mode 0755 left at %04o, want 0700", fi.Mode().Perm())
	}
}

func TestLoadIdentityMissingSaysRunKeygen(t *testing.T) {
	_, err := LoadIdentity(t.TempDir())
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "mixmta keygen") {
		t.Errorf("err = %v, want fs.ErrNotExist mentioning mixmta keygen", err)
	}
}
