package nodes

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk/mixkey"
)

// formatOf is the Sphinx format of a mix public key, by its size.
func formatOf(pub []byte) mixkey.Kind {
	if len(pub) == mixkey.XWingPublicSize {
		return mixkey.XWing
	}
	return mixkey.X25519Kind
}

// newXWingNode is newTestNode for the KEM format.
func newXWingNode(t *testing.T, name string, now time.Time) *testNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	id, _, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := OpenFormat(dir, testLength, testGrace, mixkey.XWing)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	d, err := Export(id, ks.Keys(now), NodeInfo{Name: name, MixAddress: "127.0.0.1:7000", Capabilities: []string{CapExit}}, now)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	return &testNode{dir: dir, id: id, ks: ks, desc: d}
}

// A KeyStore of the KEM format makes X-Wing key files (0600, the mixkey
// format, 1216-byte public keys), rotates and deletes them like X25519
// ones, and its descriptor says sphinx_format xwing and verifies.
func TestXWingKeyStoreRotatesAndExports(t *testing.T) {
	n := newXWingNode(t, "kem", t0)
	keys := n.ks.Keys(t0)
	if len(keys) != 2 {
		t.Fatalf("%d keys, want the current and the next", len(keys))
	}
	for _, k := range keys {
		path := filepath.Join(n.dir, mixKeyName(k.Epoch))
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v", path, err, fi.Mode())
		}
		priv, meta, err := mixkey.ReadFile(path)
		if err != nil || meta.Kind != mixkey.XWing || !bytes.Equal(priv.Public(), k.Public) || len(k.Public) != mixkey.XWingPublicSize {
			t.Fatalf("%s: %v, kind %v", path, err, meta.Kind)
		}
		priv.Wipe()
	}
	if n.desc.SphinxFormat != "xwing" {
		t.Fatalf("descriptor sphinx_format %q", n.desc.SphinxFormat)
	}
	node, err := VerifyNode(n.desc, t0)
	if err != nil || node.Format != mixkey.XWing {
		t.Fatalf("VerifyNode: %v, format %v", err, node.Format)
	}
	// Two epochs and the grace later the first key is gone from disk.
	later := t0.Add(2*testLength + testGrace)
	ch, err := n.ks.Ensure(later)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Deleted) == 0 || ch.Deleted[0] != keys[0].Epoch {
		t.Fatalf("Ensure deleted %v, want epoch %d first", ch.Deleted, keys[0].Epoch)
	}
	if _, err := os.Stat(filepath.Join(n.dir, mixKeyName(keys[0].Epoch))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("retired X-Wing key file still there: %v", err)
	}
}

// A key directory holding keys of the other format is refused, both ways:
// a node never serves two formats.
func TestKeyStoreRefusesKeysOfTheOtherFormat(t *testing.T) {
	x := newTestNode(t, "x", false, t0)
	if _, err := OpenFormat(x.dir, testLength, testGrace, mixkey.XWing); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("X25519 keys opened as xwing: %v", err)
	}
	k := newXWingNode(t, "k", t0)
	if _, err := Open(k.dir, testLength, testGrace); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("X-Wing keys opened as x25519: %v", err)
	}
}

// A descriptor of one format never verifies as the other: switching
// sphinx_format (with or without the keys) breaks a signature or a size,
// and the contexts keep an X-Wing key signature from passing as an
// X25519 one.
func TestDescriptorFormatsDoNotCrossVerify(t *testing.T) {
	k := newXWingNode(t, "kem", t0)
	d := clone(t, k.desc)
	d.SphinxFormat = ""
	if err := Verify(d, t0); !errors.Is(err, ErrMalformed) {
		t.Errorf("xwing descriptor read as x25519: %v, want ErrMalformed (key size)", err)
	}
	x := newTestNode(t, "x", true, t0)
	d = clone(t, x.desc)
	d.SphinxFormat = "xwing"
	if err := Verify(d, t0); !errors.Is(err, ErrMalformed) {
		t.Errorf("x25519 descriptor read as xwing: %v, want ErrMalformed (key size)", err)
	}
	d = clone(t, x.desc)
	d.SphinxFormat = "kyber"
	if err := Verify(d, t0); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown sphinx_format: %v, want ErrMalformed", err)
	}
	// Same bytes, other context: the mix key and descriptor signatures of
	// one format do not verify under the other's.
	dec, err := decode(k.desc, true)
	if err != nil {
		t.Fatal(err)
	}
	id := NodeIDOf(dec.identity)
	kk := dec.keys[0]
	if bytes.Equal(mixKeyMessage(mixkey.XWing, id, kk.epoch, kk.pub, kk.notBefore, kk.notAfter),
		mixKeyMessage(mixkey.X25519Kind, id, kk.epoch, kk.pub, kk.notBefore, kk.notAfter)) {
		t.Errorf("mix key signatures of both formats sign the same message")
	}
	dx := *dec
	dx.format = mixkey.X25519Kind
	if bytes.Equal(descriptorMessage(k.desc, dec), descriptorMessage(k.desc, &dx)) {
		t.Errorf("descriptor signatures of both formats sign the same message")
	}
}

// The nodes file states the format; a descriptor of the other format in
// it is refused (ErrWrongFormat) with the whole file; AddNodes keeps the
// format and refuses a descriptor of the other.
func TestNodesFileFormatIsEnforced(t *testing.T) {
	dir := t.TempDir()
	a, b := newXWingNode(t, "a", t0), newXWingNode(t, "b", t0)
	x := newTestNode(t, "x", true, t0)
	path := filepath.Join(dir, "nodes.json")
	if _, err := AddNodes(path, []*Descriptor{a.desc, b.desc}, t0); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), `"sphinx_format": "xwing"`) {
		t.Fatalf("nodes file without its format:\n%.200s", data)
	}
	dir1, err := LoadNodes(path, t0)
	if err != nil || dir1.Format != mixkey.XWing || dir1.Len() != 2 {
		t.Fatalf("LoadNodes: %v", err)
	}
	if _, err := AddNodes(path, []*Descriptor{x.desc}, t0); !errors.Is(err, ErrWrongFormat) {
		t.Fatalf("AddNodes of an x25519 descriptor to an xwing file: %v", err)
	}
	// Hand-edited: the header dropped, or an x25519 descriptor added.
	var f NodesFile
	json.Unmarshal(data, &f)
	f.SphinxFormat = ""
	b1, _ := json.Marshal(f)
	os.WriteFile(path, b1, 0o644)
	if _, err := LoadNodes(path, t0); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("xwing descriptors in an x25519 file: %v", err)
	}
	f.SphinxFormat = "xwing"
	f.Nodes = append(f.Nodes, x.desc)
	b2, _ := json.Marshal(f)
	os.WriteFile(path, b2, 0o644)
	if _, err := LoadNodes(path, t0); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("an x25519 descriptor in an xwing file: %v", err)
	}
	os.WriteFile(path, []byte(`{"sphinx_format": "kyber", "nodes": []}`), 0o644)
	if _, err := LoadNodes(path, t0); err == nil || !strings.Contains(err.Error(), "kyber") {
		t.Errorf("unknown format: %v", err)
	}
}

// An X-Wing mix key, correctly signed, is still refused when it is no
// key: an ML-KEM-768 encapsulation key with a coefficient not reduced
// mod q (FIPS 203 §7.2 input check), or an X25519 half of low order. A
// sender would otherwise encapsulate to it: a low-order X25519 half
// leaves only ML-KEM protecting the hop, and an invalid ML-KEM key only
// X25519.
func TestVerifyRefusesInvalidXWingMixKeys(t *testing.T) {
	n := newXWingNode(t, "kem", t0)
	k0 := n.desc.MixKeys[0]
	good := mustB64(k0.Public)
	unreduced := bytes.Clone(good)
	unreduced[0], unreduced[1] = 0xff, 0x0f // first coefficient 4095 ≥ q = 3329
	lowX := bytes.Clone(good)
	clear(lowX[mixkey.XWingPublicSize-32:]) // u = 0
	lowX1 := bytes.Clone(good)
	clear(lowX1[mixkey.XWingPublicSize-32:])
	lowX1[mixkey.XWingPublicSize-32] = 1 // u = 1
	for name, pub := range map[string][]byte{"unreduced ML-KEM coefficient": unreduced, "X25519 half u=0": lowX, "X25519 half u=1": lowX1} {
		t.Run(name, func(t *testing.T) {
			d := clone(t, n.desc)
			d.MixKeys[0] = mixKeyFor(n.id, n.id.ID(), k0.Epoch, pub, k0.NotBefore, k0.NotAfter)
			signedBy(t, d, n.id)
			if err := Verify(d, t0); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
	// Control: the same re-signing of the good key verifies.
	d := clone(t, n.desc)
	d.MixKeys[0] = mixKeyFor(n.id, n.id.ID(), k0.Epoch, good, k0.NotBefore, k0.NotAfter)
	signedBy(t, d, n.id)
	if err := Verify(d, t0); err != nil {
		t.Fatalf("the re-signed good key: %v", err)
	}
}
