package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// nodesFileOf writes a nodes file of one node of the given format to path.
func nodesFileOf(t *testing.T, path, name string, kind mixkey.Kind, now time.Time) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	id, _, err := nodes.LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := nodes.OpenFormat(dir, time.Hour, 10*time.Minute, kind)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Ensure(now); err != nil {
		t.Fatal(err)
	}
	d, err := nodes.Export(id, ks.Keys(now), nodes.NodeInfo{Name: name, MixAddress: "127.0.0.1:7000", Capabilities: []string{nodes.CapExit}}, now)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	os.Remove(tmp)
	if _, err := nodes.AddNodes(tmp, []*nodes.Descriptor{d}, now); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A running node of the KEM format whose nodes file is replaced by one of
// the X25519 format (a downgrade by whoever can write or serve the file)
// refuses it at reload, logs why, and keeps routing over the X-Wing
// directory it had. Control: a changed nodes file of its own format is
// taken.
func TestLiveDirectoryRefusesAnotherFormatAtReload(t *testing.T) {
	now := time.Now()
	path := filepath.Join(t.TempDir(), "nodes.json")
	nodesFileOf(t, path, "kem1", mixkey.XWing, now)
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	l, err := newLiveDirectory(path, mixkey.XWing, log)
	if err != nil {
		t.Fatal(err)
	}
	first := l.get()

	bump := func() { // a distinct mtime, whatever the file system's resolution
		l.mtime = time.Time{}
	}
	nodesFileOf(t, path, "old", mixkey.X25519Kind, now)
	bump()
	l.reload()
	if l.get() != first || l.get().Format != mixkey.XWing {
		t.Fatalf("an x25519 nodes file replaced the xwing directory (format now %v)", l.get().Format)
	}
	if !strings.Contains(logs.String(), "changed nodes file refused") || !strings.Contains(logs.String(), "sphinx_format is x25519") {
		t.Errorf("the refusal is not logged with its reason:\n%s", logs.String())
	}
	for _, n := range l.Nodes() {
		for _, k := range n.Keys {
			if len(k.Public) != mixkey.XWingPublicSize {
				t.Fatalf("node %s offers a %d-byte mix key after the refused reload", n.Name, len(k.Public))
			}
		}
	}

	nodesFileOf(t, path, "kem2", mixkey.XWing, now)
	bump()
	l.reload()
	if l.get() == first || l.get().Format != mixkey.XWing || l.Nodes()[0].Name != "kem2" {
		t.Fatalf("control: a changed xwing nodes file was not taken")
	}
}
