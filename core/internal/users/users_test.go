package users

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestArgon2idAndBcryptHashesVerify(t *testing.T) {
	bc, err := HashBcrypt("pw one")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{HashArgon2id("pw one"), bc} {
		h, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if !h.Verify("pw one") || h.Verify("pw two") || h.Verify("") {
			t.Fatalf("%q: Verify is wrong", s)
		}
	}
}

func TestParseRefusesWhatItCannotVerify(t *testing.T) {
	for _, c := range []struct{ hash, want string }{
		{"plaintext", "not a bcrypt"},
		{"$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "only the argon2id variant"},
		{"$argon2id$v=16$m=19456,t=2,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "only v=19"},
		{"$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "out of range"},
		{"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5", "salt"},
		{"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$a2V5", "key"},
		{"$2b$04$short", "malformed bcrypt"},
	} {
		if _, err := Parse(c.hash); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", c.hash, err, c.want)
		}
	}
}

func TestReadReportsFileLineAndMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "users")
	if err := Set(p, "alice", HashArgon2id("x")); err != nil {
		t.Fatal(err)
	}
	if err := Set(p, "bad:name", HashArgon2id("x")); err == nil {
		t.Fatal("Set accepted a name with ':'")
	}
	b, _ := os.ReadFile(p)
	os.WriteFile(p, append(b, "bob:nothash\n"...), 0o600)
	if _, err := Read(p); err == nil || !strings.HasPrefix(err.Error(), p+":2: user \"bob\"") {
		t.Fatalf("Read: %v", err)
	}
	os.Chmod(p, 0o640)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Read of a group-readable file: %v", err)
	}
}
