package nodes

import (
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestEpochIsFloorOfUnixSecondsOverLength(t *testing.T) {
	cases := []struct {
		t      time.Time
		length time.Duration
		want   uint64
	}{
		{time.Unix(0, 0), time.Hour, 0},
		{time.Unix(3599, 999_999_999), time.Hour, 0},
		{time.Unix(3600, 0), time.Hour, 1},
		{time.Unix(1_800_000_000, 0), 2 * time.Second, 900_000_000},
		{time.Unix(1_800_000_001, 0), 2 * time.Second, 900_000_000},
		{time.Unix(1_800_000_002, 0), 2 * time.Second, 900_000_001},
		{time.Unix(7, 0), 1500 * time.Millisecond, 7}, // length truncated to 1 s
		{time.Unix(-5, 0), time.Hour, 0},
		{time.Unix(1_800_000_000, 0).In(time.FixedZone("x", 5*3600)), time.Hour, 500_000},
	}
	for _, c := range cases {
		if got := Epoch(c.t, c.length); got != c.want {
			t.Errorf("Epoch(%v, %v) = %d, want %d", c.t, c.length, got, c.want)
		}
	}
	for _, e := range []uint64{0, 1, 900_000_000} {
		if got := Epoch(EpochStart(e, testLength), testLength); got != e {
			t.Errorf("Epoch(EpochStart(%d)) = %d", e, got)
		}
		if got := Epoch(EpochStart(e, testLength).Add(-time.Nanosecond), testLength); e > 0 && got != e-1 {
			t.Errorf("Epoch(EpochStart(%d) - 1ns) = %d, want %d", e, got, e-1)
		}
	}
}

func TestOpenRejectsEpochSettingsThatAreNotWholeSecondsOrGraceNotBelowLength(t *testing.T) {
	cases := []struct {
		length, grace time.Duration
		ok            bool
	}{
		{time.Hour, 10 * time.Minute, true},
		{2 * time.Second, 0, true},
		{2 * time.Second, time.Second, true},
		{0, 0, false},
		{500 * time.Millisecond, 0, false},
		{1500 * time.Millisecond, 0, false},
		{2 * time.Second, -time.Second, false},
		{2 * time.Second, 2 * time.Second, false},
		{2 * time.Second, 500 * time.Millisecond, false},
	}
	for _, c := range cases {
		_, err := Open(t.TempDir(), c.length, c.grace)
		if (err == nil) != c.ok {
			t.Errorf("Open(length %v, grace %v): err = %v, want ok=%v", c.length, c.grace, err, c.ok)
		}
	}
}

func epochsOf(t *testing.T, ks *KeyStore, now time.Time) []uint64 {
	t.Helper()
	var out []uint64
	for _, k := range ks.Keys(now) {
		out = append(out, k.Epoch)
	}
	return out
}

func TestEnsureCreatesCurrentAndNextEpochKeysMode0600InDir0700(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks, err := Open(dir, testLength, testGrace)
	if err != nil {
		t.Fatal(err)
	}
	e := Epoch(t0, testLength)
	ch, err := ks.Ensure(t0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{e, e + 1}; !slices.Equal(ch.Created, want) || len(ch.Deleted) != 0 {
		t.Fatalf("Ensure changes = %+v, want created %v", ch, want)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", fi.Mode().Perm())
	}
	for _, ep := range []uint64{e, e + 1} {
		path := filepath.Join(dir, fmt.Sprintf("mix-%d.key", ep))
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", path, fi.Mode().Perm())
		}
	}
	keys := ks.Keys(t0)
	if len(keys) != 2 {
		t.Fatalf("Keys = %d keys, want 2", len(keys))
	}
	for i, k := range keys {
		ep := e + uint64(i)
		if k.Epoch != ep || !k.NotBefore.Equal(EpochStart(ep, testLength)) || !k.NotAfter.Equal(EpochStart(ep+1, testLength).Add(testGrace)) {
			t.Errorf("key %d: epoch %d [%v, %v), want epoch %d [%v, %v)", i, k.Epoch, k.NotBefore, k.NotAfter,
				ep, EpochStart(ep, testLength), EpochStart(ep+1, testLength).Add(testGrace))
		}
		priv, err := ecdh.X25519().NewPrivateKey(privateOf(t, dir, ep))
		if err != nil || !bytes.Equal(priv.PublicKey().Bytes(), k.Public) {
			t.Errorf("key %d: the file's private key does not match Public (%v)", i, err)
		}
	}
	// The file is PKCS#8 PEM with the validity in its headers.
	data, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("mix-%d.key", e)))
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || block.Headers["Epoch"] != fmt.Sprint(e) {
		t.Fatalf("mix key file is not the expected PEM: %q", data)
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Errorf("mix key file is not PKCS#8: %v", err)
	}
}

// privateOf reads the private key of epoch e from its file in dir with
// the standard library (PEM, PKCS#8): the file format is the standard one.
func privateOf(t *testing.T, dir string, e uint64) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, mixKeyName(e)))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("mix key file of epoch %d is not PEM", e)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("mix key file of epoch %d: %v", e, err)
	}
	p, ok := k.(*ecdh.PrivateKey)
	if !ok {
		t.Fatalf("mix key file of epoch %d holds a %T", e, k)
	}
	return p.Bytes()
}

func TestEnsureIsIdempotentAndKeepsKeysAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	ks, _ := Open(dir, testLength, testGrace)
	ks.Ensure(t0)
	before := ks.Keys(t0)
	for i := range 5 {
		ch, err := ks.Ensure(t0.Add(time.Duration(i) * 100 * time.Millisecond))
		if err != nil || len(ch.Created)+len(ch.Deleted) != 0 {
			t.Fatalf("Ensure #%d changed something: %+v %v", i, ch, err)
		}
	}
	ks2, err := Open(dir, testLength, testGrace)
	if err != nil {
		t.Fatal(err)
	}
	after := ks2.Keys(t0)
	if len(after) != len(before) {
		t.Fatalf("reopened store has %d keys, want %d", len(after), len(before))
	}
	for i := range before {
		if !bytes.Equal(before[i].Public, after[i].Public) || !after[i].NotAfter.Equal(before[i].NotAfter) {
			t.Errorf("key %d differs after reopen", i)
		}
	}
}

func TestKeysHoldsPreviousEpochOnlyDuringItsGrace(t *testing.T) {
	ks, _ := Open(t.TempDir(), testLength, testGrace)
	e := Epoch(t0, testLength)
	ks.Ensure(t0)                 // e, e+1
	ks.Ensure(t0.Add(testLength)) // e+2
	start := EpochStart(e+1, testLength)
	cases := []struct {
		at   time.Time
		want []uint64
	}{
		{t0, []uint64{e, e + 1}}, // e+2 is not yet due: more than one epoch ahead
		{start, []uint64{e, e + 1, e + 2}},
		{start.Add(testGrace - time.Nanosecond), []uint64{e, e + 1, e + 2}},
		{start.Add(testGrace), []uint64{e + 1, e + 2}},
		{start.Add(testLength + testGrace), []uint64{e + 2}},
		{start.Add(2*testLength + testGrace), nil},
	}
	for _, c := range cases {
		if got := epochsOf(t, ks, c.at); !slices.Equal(got, c.want) {
			t.Errorf("Keys(start(e+1) + %v) epochs = %v, want %v", c.at.Sub(start), got, c.want)
		}
	}
}

// TestEnsureDeletesKeyAfterGraceLeavingNothingToRecoverItFrom is the
// forward-secrecy property: once epoch e's grace has passed, nothing in the
// key directory holds e's private key, and the file's old inode was zeroed.
func TestEnsureDeletesKeyAfterGraceLeavingNothingToRecoverItFrom(t *testing.T) {
	dir := t.TempDir()
	ks, _ := Open(dir, testLength, testGrace)
	e := Epoch(t0, testLength)
	ks.Ensure(t0)
	old := ks.Keys(t0)[0]
	if old.Epoch != e {
		t.Fatalf("first key epoch %d, want %d", old.Epoch, e)
	}
	path := filepath.Join(dir, mixKeyName(e))
	oldPriv := privateOf(t, dir, e)
	oldFile, _ := os.ReadFile(path)
	block, _ := pem.Decode(oldFile)
	oldDER := bytes.Clone(block.Bytes)
	// An open descriptor on the old file shows whether its blocks were
	// overwritten before the unlink.
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()

	end := EpochStart(e+1, testLength).Add(testGrace)
	if ch, _ := ks.Ensure(end.Add(-time.Nanosecond)); len(ch.Deleted) != 0 {
		t.Fatalf("deleted %v before the end of the grace period", ch.Deleted)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("key deleted during its grace period: %v", err)
	}
	ch, err := ks.Ensure(end)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ch.Deleted, e) {
		t.Fatalf("Ensure at end of grace: deleted %v, want %d", ch.Deleted, e)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s still exists after the grace period (err %v)", path, err)
	}
	if slices.Contains(epochsOf(t, ks, end), e) {
		t.Errorf("Keys still returns epoch %d after its grace", e)
	}
	rest := make([]byte, len(oldFile))
	n, _ := fd.ReadAt(rest, 0)
	if n != len(oldFile) || bytes.Count(rest, []byte{0}) != len(rest) {
		t.Errorf("the deleted file's content was not overwritten with zeros: %q", rest[:n])
	}
	// Nothing left in the directory holds the old private key: not raw, not
	// as DER, not as PEM, and no remaining key derives the old public key.
	b64Line := strings.SplitN(string(oldFile), "\n\n", 2)[1][:40]
	entries, _ := os.ReadDir(dir)
	for _, de := range entries {
		data, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, oldPriv) || bytes.Contains(data, oldDER) || bytes.Contains(data, []byte(b64Line)) {
			t.Errorf("%s still holds the deleted key of epoch %d", de.Name(), e)
		}
		for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if p, ok := k.(*ecdh.PrivateKey); err == nil && ok && bytes.Equal(p.PublicKey().Bytes(), old.Public) {
				t.Errorf("%s holds a private key for the deleted public key", de.Name())
			}
		}
	}
}

func TestEnsureWipesTempFilesLeftByACrash(t *testing.T) {
	dir := t.TempDir()
	ks, _ := Open(dir, testLength, testGrace)
	leftover := filepath.Join(dir, tmpPrefix+"0123456789abcdef")
	os.WriteFile(leftover, []byte("half a key"), 0o600)
	if _, err := ks.Ensure(t0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left by a crash survived Ensure (err %v)", err)
	}
}

func TestEnsureRefusesMixKeyReadableByOthersAndDeletesNothing(t *testing.T) {
	dir := t.TempDir()
	ks, _ := Open(dir, testLength, testGrace)
	ks.Ensure(t0)
	e := Epoch(t0, testLength)
	os.Chmod(filepath.Join(dir, mixKeyName(e+1)), 0o644)
	_, err := ks.Ensure(t0.Add(10 * testLength)) // e would be deleted
	if !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), mixKeyName(e+1)) {
		t.Fatalf("Ensure with a 0644 mix key: err = %v, want ErrInsecurePermissions naming the file", err)
	}
	if _, err := os.Stat(filepath.Join(dir, mixKeyName(e))); err != nil {
		t.Errorf("Ensure deleted a key although it failed: %v", err)
	}
	if _, err := Open(dir, testLength, testGrace); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("Open with a 0644 mix key: err = %v, want ErrInsecurePermissions", err)
	}
}

func TestEnsureRefusesAMixKeyFileWhoseEpochHeaderDoesNotMatchItsName(t *testing.T) {
	dir := t.TempDir()
	ks, _ := Open(dir, testLength, testGrace)
	ks.Ensure(t0)
	e := Epoch(t0, testLength)
	// A key file renamed to another epoch would be used in that epoch.
	os.Rename(filepath.Join(dir, mixKeyName(e+1)), filepath.Join(dir, mixKeyName(e+5)))
	if _, err := ks.Ensure(t0); err == nil || !strings.Contains(err.Error(), "Epoch header") {
		t.Errorf("Ensure with a renamed key file: err = %v, want an Epoch header error", err)
	}
}

func TestConcurrentEnsureCreatesOneKeyPerEpoch(t *testing.T) {
	dir := t.TempDir()
	// Two stores on one directory stand for two processes (the daemon and
	// mixmta keygen): flock excludes them as it would separate processes.
	a, _ := Open(dir, testLength, testGrace)
	b, _ := Open(dir, testLength, testGrace)
	var wg sync.WaitGroup
	for g := range 8 {
		ks := a
		if g%2 == 1 {
			ks = b
		}
		wg.Go(func() {
			for i := range 20 {
				now := t0.Add(time.Duration(i) * 500 * time.Millisecond)
				if _, err := ks.Ensure(now); err != nil {
					t.Error(err)
					return
				}
				ks.Keys(now)
			}
		})
	}
	wg.Wait()
	now := t0.Add(19 * 500 * time.Millisecond)
	a.Ensure(now)
	b.Ensure(now)
	ka, kb := a.Keys(now), b.Keys(now)
	if len(ka) == 0 || len(ka) != len(kb) {
		t.Fatalf("stores disagree: %d and %d keys", len(ka), len(kb))
	}
	for i := range ka {
		if ka[i].Epoch != kb[i].Epoch || !bytes.Equal(ka[i].Public, kb[i].Public) {
			t.Errorf("epoch %d: the two stores hold different keys", ka[i].Epoch)
		}
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
		if strings.HasPrefix(de.Name(), tmpPrefix) {
			t.Errorf("temporary file left: %s", de.Name())
		}
	}
	// now is 1.5 s into its epoch: the previous key's grace (1 s) is over.
	e := Epoch(now, testLength)
	want := []string{".lock", mixKeyName(e), mixKeyName(e + 1)}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want %v", names, want)
	}
}

func TestSetAheadCreatesAndPublishesFutureEpochKeys(t *testing.T) {
	dir := t.TempDir()
	ks, err := Open(dir, 10*time.Second, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ks.SetAhead(5)
	now := time.Unix(1_000_000, 0)
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	cur := Epoch(now, 10*time.Second)
	pub := ks.Published(now)
	if len(pub) != 6 || pub[0].Epoch != cur || pub[5].Epoch != cur+5 {
		t.Fatalf("published %d keys from epoch %d, want epochs %d..%d", len(pub), pub[0].Epoch, cur, cur+5)
	}
	if k := epochsOf(t, ks, now); len(k) != 2 {
		t.Fatalf("mixer keys %v, want only the current and next epoch", k)
	}
}

// A node that moves to a directory keeps no key further ahead than the
// directory needs: the keys a larger keys_ahead made before are wiped by
// the next Ensure; without DropBeyondAhead (a nodes file, whose
// descriptors handed around may still name them) they stay.
func TestDropBeyondAheadWipesKeysOfLaterEpochs(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	cur := Epoch(now, 10*time.Second)
	for _, drop := range []bool{false, true} {
		dir := t.TempDir()
		ks, err := Open(dir, 10*time.Second, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ks.SetAhead(24)
		if _, err := ks.Ensure(now); err != nil {
			t.Fatal(err)
		}
		ks.SetAhead(2)
		if drop {
			ks.DropBeyondAhead()
		}
		ch, err := ks.Ensure(now)
		if err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob(filepath.Join(dir, "mix-*.key"))
		switch {
		case drop && (len(files) != 3 || len(ch.Deleted) != 22 || ch.Deleted[0] != cur+3):
			t.Fatalf("dropping: %d key files left, deleted %v; want 3 (epochs %d..%d), 22 deleted", len(files), ch.Deleted, cur, cur+2)
		case !drop && (len(files) != 25 || len(ch.Deleted) != 0):
			t.Fatalf("not dropping: %d key files left, deleted %v; want all 25 kept", len(files), ch.Deleted)
		}
		if pub := ks.Published(now); drop && (len(pub) != 3 || pub[2].Epoch != cur+2) {
			t.Fatalf("published %d keys after dropping, want epochs %d..%d", len(pub), cur, cur+2)
		}
	}
}
