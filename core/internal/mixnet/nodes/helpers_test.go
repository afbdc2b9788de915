package nodes

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Test clock: 2-second epochs with 1 s of grace, starting at an epoch
// boundary.
const (
	testLength = 2 * time.Second
	testGrace  = time.Second
)

var t0 = time.Unix(1_800_000_000, 0).UTC() // epoch 900000000 at 2 s

// testNode is one node's keys and exported descriptor.
type testNode struct {
	dir  string
	id   *Identity
	ks   *KeyStore
	desc *Descriptor
}

// newTestNode runs keygen (identity + keys at now) and exports a
// descriptor at now.
func newTestNode(t *testing.T, name string, exit bool, now time.Time) *testNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	id, created, err := LoadOrCreateIdentity(dir)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateIdentity: created=%v err=%v", created, err)
	}
	ks, err := Open(dir, testLength, testGrace)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	info := NodeInfo{Name: name, MixAddress: "127.0.0.1:7000"}
	if exit {
		info.Capabilities = []string{CapExit}
	}
	d, err := Export(id, ks.Keys(now), info, now)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	return &testNode{dir: dir, id: id, ks: ks, desc: d}
}

// clone deep-copies a descriptor through JSON.
func clone(t *testing.T, d *Descriptor) *Descriptor {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseDescriptor(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// flipB64 flips one bit of the i-th decoded byte of a base64 field.
func flipB64(t *testing.T, s string, i int) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	b[i] ^= 0x01
	return base64.StdEncoding.EncodeToString(b)
}

// writeNodesFile writes {"nodes": descs} as AddNodes would.
func writeNodesFile(t *testing.T, path string, descs ...*Descriptor) []byte {
	t.Helper()
	b, err := json.MarshalIndent(NodesFile{Nodes: descs}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}
