package nodes

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkVerify: one descriptor with two mix keys (3 Ed25519
// verifications, 2 X25519 low-order checks).
func BenchmarkVerify(b *testing.B) {
	n := newTestNode(&testing.T{}, "alpha", true, t0)
	for b.Loop() {
		if err := Verify(n.desc, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadNodes100: read and verify a nodes file of 100 descriptors.
func BenchmarkLoadNodes100(b *testing.B) {
	var descs []*Descriptor
	for i := range 100 {
		descs = append(descs, newTestNode(&testing.T{}, fmt.Sprintf("n%d", i), i%3 == 0, t0).desc)
	}
	path := filepath.Join(b.TempDir(), "nodes.json")
	writeNodesFile(&testing.T{}, path, descs...)
	for b.Loop() {
		if d, err := LoadNodes(path, t0); err != nil || d.Len() != 100 {
			b.Fatal(err)
		}
	}
}
