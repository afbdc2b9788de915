package nodes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTripKeygenExportAddLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", true, t0)
	for _, n := range []*testNode{a, b} {
		if r, err := AddNode(path, n.desc, t0); err != nil || r.Replaced || r.ID != n.id.ID() {
			t.Fatalf("AddNode(%s): %+v %v", n.desc.Name, r, err)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("new nodes file mode %04o, want 0644", fi.Mode().Perm())
	}
	dir, err := LoadNodes(path, t0)
	if err != nil {
		t.Fatal(err)
	}
	if dir.Len() != 2 || len(dir.Skipped) != 0 {
		t.Fatalf("directory has %d nodes, %d skipped; want 2, 0", dir.Len(), len(dir.Skipped))
	}
	for _, n := range []*testNode{a, b} {
		got, ok := dir.Lookup(n.id.ID())
		if !ok || got.Name != n.desc.Name {
			t.Fatalf("Lookup(%s) = %v, %v", n.desc.Name, got, ok)
		}
		if addr, _ := dir.MixAddress(n.id.ID()); addr != "127.0.0.1:7000" {
			t.Errorf("MixAddress = %q", addr)
		}
		if pub, _ := dir.IdentityKey(n.id.ID()); !bytes.Equal(pub, n.id.Public()) {
			t.Errorf("IdentityKey of %s is not its identity", n.desc.Name)
		}
	}
	if _, ok := dir.Lookup([32]byte{1}); ok {
		t.Error("Lookup of an unknown id succeeded")
	}
	nodes := dir.Nodes(t0)
	if len(nodes) != 2 || nodes[0].Name != "alpha" || nodes[0].Exit || !nodes[1].Exit || nodes[0].Healthy {
		t.Fatalf("Nodes = %+v", nodes)
	}
	// The capabilities reach the mixer's directory (the sphinx router picks
	// exits by them).
	if len(nodes[0].Capabilities) != 0 || !slices.Equal(nodes[1].Capabilities, []string{"exit"}) || !nodes[1].Has("exit") {
		t.Errorf("capabilities %v and %v, want none and [exit]", nodes[0].Capabilities, nodes[1].Capabilities)
	}
	own := a.ks.Keys(t0)
	for i, k := range nodes[0].Keys {
		if k.Epoch != own[i].Epoch || !bytes.Equal(k.Public, own[i].Public) {
			t.Errorf("directory key %d of alpha differs from its own key", i)
		}
	}
	// As epochs pass, a node's ended keys leave the directory's view, then
	// the node itself.
	e := Epoch(t0, testLength)
	mid := EpochStart(e+1, testLength).Add(testGrace)
	if got := dir.Nodes(mid); len(got) != 2 || len(got[0].Keys) != 1 || got[0].Keys[0].Epoch != e+1 {
		t.Errorf("Nodes after epoch %d's grace: %+v, want only epoch %d's key", e, got, e+1)
	}
	if got := dir.Nodes(mid.Add(testLength)); len(got) != 0 {
		t.Errorf("Nodes after every key ended: %d nodes, want 0", len(got))
	}
}

func TestLoadNodesRefusesFileWithAForgedEntryNamingItsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", true, t0)
	forged := clone(t, b.desc)
	forged.MixAddress = "203.0.113.9:7000" // traffic to beta redirected
	data := writeNodesFile(t, path, a.desc, forged)
	line := 1 + bytes.Count(data[:bytes.Index(data, []byte(`"name": "beta"`))], []byte("\n")) - 2
	_, err := LoadNodes(path, t0)
	if !errors.Is(err, ErrForged) {
		t.Fatalf("err = %v, want ErrForged", err)
	}
	want := fmt.Sprintf(`%s:%d: nodes[1]: descriptor "beta" (node %s): forged`, path, line, b.id.ID().Short())
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error\n%v\ndoes not contain\n%s", err, want)
	}
}

func TestLoadNodesListsEveryBadEntry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", false, t0)
	c := newTestNode(t, "gamma", false, t0)
	fb, fc := clone(t, b.desc), clone(t, c.desc)
	fb.Signature = flipB64(t, fb.Signature, 0)
	fc.Name = "delta"
	writeNodesFile(t, path, a.desc, fb, fc)
	_, err := LoadNodes(path, t0)
	if err == nil || !strings.Contains(err.Error(), "2 of 3 descriptors are bad") ||
		!strings.Contains(err.Error(), "nodes[1]") || !strings.Contains(err.Error(), "nodes[2]") {
		t.Errorf("err = %v, want both bad entries listed", err)
	}
}

func TestLoadNodesSkipsExpiredEntriesAndReportsThem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	later := t0.Add(10 * testLength)
	old := newTestNode(t, "old", false, t0)
	fresh := newTestNode(t, "fresh", false, later)
	writeNodesFile(t, path, old.desc, fresh.desc)
	dir, err := LoadNodes(path, later)
	if err != nil {
		t.Fatal(err)
	}
	if dir.Len() != 1 || dir.All()[0].Name != "fresh" {
		t.Errorf("directory holds %d nodes, want only fresh", dir.Len())
	}
	if len(dir.Skipped) != 1 || !errors.Is(dir.Skipped[0], ErrExpired) || !strings.Contains(dir.Skipped[0].Error(), `nodes[0]: descriptor "old"`) {
		t.Errorf("Skipped = %v, want old's expiry", dir.Skipped)
	}
}

func TestLoadNodesRefusesDuplicatesAndSharedKeys(t *testing.T) {
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", false, t0)
	// alpha again, published later (another export of the same node).
	a2, err := Export(a.id, a.ks.Keys(t0), NodeInfo{Name: "alpha2", MixAddress: "127.0.0.1:7000"}, t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// beta's operator names it alpha.
	bAlpha, _ := Export(b.id, b.ks.Keys(t0), NodeInfo{Name: "alpha", MixAddress: "127.0.0.1:7000"}, t0)
	// gamma publishes (signs, for its own id) beta's public mix key.
	c := newTestNode(t, "gamma", false, t0)
	k := b.desc.MixKeys[0]
	cShared := clone(t, c.desc)
	cShared.MixKeys[0] = mixKeyFor(c.id, c.id.ID(), k.Epoch, mustB64(k.Public), k.NotBefore, k.NotAfter)
	signedBy(t, cShared, c.id)
	cases := []struct {
		name  string
		descs []*Descriptor
		kind  error
		want  string
	}{
		{"same identity twice", []*Descriptor{a.desc, b.desc, a2}, ErrDuplicate, "nodes[2]: descriptor \"alpha2\""},
		{"same name, two identities", []*Descriptor{a.desc, bAlpha}, ErrDuplicate, "name also used by nodes[0]"},
		{"mix key of another node", []*Descriptor{b.desc, cShared}, ErrMismatched, "also published by nodes[0]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "nodes.json")
			writeNodesFile(t, path, c.descs...)
			_, err := LoadNodes(path, t0)
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want %v saying %q", err, c.kind, c.want)
			}
		})
	}
}

func TestLoadNodesRefusesAFileThatIsNotANodesDocument(t *testing.T) {
	cases := []struct {
		name, data, want string
	}{
		{"array", `[]`, ":1:"},
		{"unknown key", "{\n  \"nodes\": [],\n  \"extra\": 1\n}", ":3: unknown key"},
		{"no nodes", `{}`, "no \"nodes\""},
		{"nodes twice", `{"nodes": [], "nodes": []}`, "twice"},
		{"trailing data", `{"nodes": []} x`, "after the closing"},
		{"truncated", "{\n\"nodes\": [\n{\"name\":", "unexpected end"},
		{"nodes not an array", `{"nodes": {}}`, "\"nodes\""},
	}
	for _, c := range cases {
		path := filepath.Join(t.TempDir(), "nodes.json")
		os.WriteFile(path, []byte(c.data), 0o644)
		if _, err := LoadNodes(path, t0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.name, err, c.want)
		}
	}
	path := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(path, []byte(`{"nodes": []}`), 0o644)
	if dir, err := LoadNodes(path, t0); err != nil || dir.Len() != 0 {
		t.Errorf("empty nodes file: %v", err)
	}
}

func TestAddNodeReplacesSameIdentityInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", false, t0)
	AddNodes(path, []*Descriptor{a.desc, b.desc}, t0)
	os.Chmod(path, 0o640)
	later := t0.Add(testLength)
	a.ks.Ensure(later)
	a2, err := Export(a.id, a.ks.Keys(later), NodeInfo{Name: "alpha", MixAddress: "127.0.0.1:7100", Capabilities: []string{"exit"}}, later)
	if err != nil {
		t.Fatal(err)
	}
	r, err := AddNode(path, a2, later)
	if err != nil || !r.Replaced {
		t.Fatalf("AddNode of a newer alpha: %+v %v, want replaced", r, err)
	}
	dir, err := LoadNodes(path, later)
	if err != nil {
		t.Fatal(err)
	}
	all := dir.All()
	if len(all) != 2 || all[0].Name != "alpha" || all[0].MixAddress != "127.0.0.1:7100" || !all[0].Exit {
		t.Errorf("after replacement: %d nodes, first %+v; want the new alpha first", len(all), all[0])
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("nodes file mode changed to %04o, want 0640 kept", fi.Mode().Perm())
	}
}

// TestAddNodeRefusalsLeaveTheFileUnchanged: each refused AddNode names the
// descriptor and writes nothing.
func TestAddNodeRefusalsLeaveTheFileUnchanged(t *testing.T) {
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", false, t0)
	aNewer, _ := Export(a.id, a.ks.Keys(t0), NodeInfo{Name: "alpha", MixAddress: "127.0.0.1:7000"}, t0.Add(time.Second))
	bAlpha, _ := Export(b.id, b.ks.Keys(t0), NodeInfo{Name: "alpha", MixAddress: "127.0.0.1:7000"}, t0)
	forged := clone(t, b.desc)
	forged.Name = "betb"
	cases := []struct {
		name    string
		initial []*Descriptor
		add     *Descriptor
		at      time.Time
		kind    error
	}{
		{"forged", []*Descriptor{a.desc}, forged, t0, ErrForged},
		{"expired", []*Descriptor{a.desc}, b.desc, t0.Add(time.Hour), ErrExpired},
		{"older than the one in the file", []*Descriptor{aNewer}, a.desc, t0, ErrStale},
		{"name taken by another identity", []*Descriptor{a.desc}, bAlpha, t0, ErrDuplicate},
		{"file holds a forged entry", []*Descriptor{forged}, a.desc, t0, ErrForged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dirPath := t.TempDir()
			path := filepath.Join(dirPath, "nodes.json")
			before := writeNodesFile(t, path, c.initial...)
			_, err := AddNode(path, c.add, c.at)
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), "descriptor \"") {
				t.Fatalf("err = %v, want %v naming the descriptor", err, c.kind)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Error("the nodes file changed although AddNode failed")
			}
			entries, _ := os.ReadDir(dirPath)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), tmpPrefix) {
					t.Errorf("temporary file left: %s", e.Name())
				}
			}
		})
	}
}

func TestConcurrentAddNodeKeepsEveryNode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodes.json")
	var ns []*testNode
	for i := range 6 {
		ns = append(ns, newTestNode(t, fmt.Sprintf("n%d", i), false, t0))
	}
	var wg sync.WaitGroup
	for _, n := range ns {
		wg.Go(func() {
			if _, err := AddNode(path, n.desc, t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	dir, err := LoadNodes(path, t0)
	if err != nil {
		t.Fatal(err)
	}
	if dir.Len() != len(ns) {
		t.Errorf("nodes file holds %d nodes after %d concurrent adds", dir.Len(), len(ns))
	}
}

func TestReadDescriptorsTakesOneDescriptorOrANodesFile(t *testing.T) {
	a := newTestNode(t, "alpha", false, t0)
	b := newTestNode(t, "beta", false, t0)
	path := filepath.Join(t.TempDir(), "nodes.json")
	file := writeNodesFile(t, path, a.desc, b.desc)
	ds, err := ReadDescriptors("nodes.json", file)
	if err != nil || len(ds) != 2 || ds[1].Name != "beta" {
		t.Errorf("nodes file: %d descriptors, %v", len(ds), err)
	}
	single, _ := json.Marshal(a.desc)
	ds, err = ReadDescriptors("alpha.json", single)
	if err != nil || len(ds) != 1 || ds[0].Name != "alpha" {
		t.Errorf("one descriptor: %d descriptors, %v", len(ds), err)
	}
	_, err = ReadDescriptors("x.json", []byte(`{"version": 1, "name": "x", "bogus": 1}`))
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "x.json") {
		t.Errorf("descriptor with an unknown field: %v, want ErrMalformed naming the input", err)
	}
}
