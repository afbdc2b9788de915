package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// run executes mixmta with args in-process and returns its output.
func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := root()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, "", args...)
	if err != nil {
		t.Fatalf("mixmta %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var nodeIDLine = regexp.MustCompile(`(?m)^node id\s+([0-9a-f]{64})$`)

func TestKeygenCreatesIdentityOnceAndPrintsNodeID(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	first := mustRun(t, "keygen", "--keys", keys)
	if !strings.Contains(first, "identity  created") || !strings.Contains(first, "2 created") {
		t.Errorf("first keygen output:\n%s\nwant the identity and 2 mix keys created (current + keys_ahead 1)", first)
	}
	key1, _ := os.ReadFile(filepath.Join(keys, nodes.IdentityFile))
	second := mustRun(t, "keygen", "--keys", keys)
	if !strings.Contains(second, "identity  existing") || !strings.Contains(second, "0 created") {
		t.Errorf("second keygen output:\n%s\nwant the existing identity and no new key", second)
	}
	key2, _ := os.ReadFile(filepath.Join(keys, nodes.IdentityFile))
	if !bytes.Equal(key1, key2) {
		t.Error("second keygen replaced the identity key")
	}
	m1, m2 := nodeIDLine.FindStringSubmatch(first), nodeIDLine.FindStringSubmatch(second)
	id, err := nodes.LoadIdentity(keys)
	if err != nil || m1 == nil || m2 == nil || m1[1] != id.ID().String() || m2[1] != m1[1] {
		t.Errorf("printed node ids %v / %v, want %v (%v)", m1, m2, id, err)
	}
	entries, _ := os.ReadDir(keys)
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
}

func TestExportAddVerifyAcceptsGoodAndNamesForgedDescriptors(t *testing.T) {
	dir := t.TempDir()
	nodesFile := filepath.Join(dir, "nodes.json")
	for _, n := range []struct{ name, addr string }{{"alpha", "127.0.0.1:7001"}, {"beta", "127.0.0.1:7002"}} {
		keys := filepath.Join(dir, n.name)
		mustRun(t, "keygen", "--keys", keys)
		args := []string{"node", "export", "--keys", keys, "--name", n.name, "--address", n.addr}
		if n.name == "beta" {
			args = append(args, "--exit")
		}
		out := mustRun(t, args...)
		var d nodes.Descriptor
		if err := json.Unmarshal([]byte(out), &d); err != nil || d.Name != n.name {
			t.Fatalf("node export printed %q (%v), want a descriptor of %s", out, err, n.name)
		}
		os.WriteFile(filepath.Join(dir, n.name+".json"), []byte(out), 0o644)
	}
	out := mustRun(t, "nodes", "add", filepath.Join(dir, "alpha.json"), filepath.Join(dir, "beta.json"), "--nodes", nodesFile)
	if !strings.Contains(out, `added "alpha"`) || !strings.Contains(out, `added "beta"`) {
		t.Errorf("nodes add output:\n%s", out)
	}
	out = mustRun(t, "nodes", "verify", "--nodes", nodesFile)
	if !regexp.MustCompile(`"alpha"\s+[0-9a-f]{8}\s+no\s+\d+-\d+\s+\S+\s+ok`).MatchString(out) ||
		!regexp.MustCompile(`"beta"\s+[0-9a-f]{8}\s+yes\s+`).MatchString(out) ||
		!strings.Contains(out, "2 descriptors OK") {
		t.Errorf("nodes verify output:\n%s", out)
	}
	// Adding the same export again replaces it.
	out = mustRun(t, "nodes", "add", filepath.Join(dir, "alpha.json"), "--nodes", nodesFile)
	if !strings.Contains(out, `replaced "alpha"`) {
		t.Errorf("re-adding alpha: %s", out)
	}

	// A forged descriptor: beta's exit capability removed.
	good, _ := os.ReadFile(nodesFile)
	forged := bytes.Replace(good, []byte(`"exit"`), nil, 1)
	os.WriteFile(nodesFile, forged, 0o644)
	out, err := run(t, "", "nodes", "verify", "--nodes", nodesFile)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 descriptors rejected") ||
		!regexp.MustCompile(`nodes\.json:\d+: nodes\[1\]: descriptor "beta" \(node [0-9a-f]{8}\): forged`).MatchString(out) {
		t.Errorf("verify of a forged file: err %v, output:\n%s", err, out)
	}

	// nodes add of a forged export is refused, naming the file and the
	// descriptor; nothing is written.
	os.WriteFile(nodesFile, good, 0o644)
	betaForged := bytes.Replace(mustRead(t, filepath.Join(dir, "beta.json")), []byte("127.0.0.1:7002"), []byte("127.0.0.1:7009"), 1)
	_, err = run(t, string(betaForged), "nodes", "add", "-", "--nodes", nodesFile)
	if err == nil || !strings.Contains(err.Error(), `-: descriptor "beta"`) || !strings.Contains(err.Error(), "forged") {
		t.Errorf("nodes add of a forged descriptor from stdin: err = %v", err)
	}
	if !bytes.Equal(mustRead(t, nodesFile), good) {
		t.Error("nodes file changed although nodes add failed")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNodeExportRefusesWithoutIdentityOrNameOrAddress(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"node", "export", "--keys", keys, "--name", "a", "--address", "127.0.0.1:1"}, "run mixmta keygen"},
		{[]string{"node", "export", "--keys", keys, "--address", "127.0.0.1:1"}, "--name and --address are required"},
		{[]string{"node", "export", "--keys", keys, "--name", "a"}, "--name and --address are required"},
		{[]string{"node", "export", "--keys", keys, "--name", "a b", "--address", "127.0.0.1:1"}, "malformed: name"},
	}
	for i, c := range cases {
		if i == 3 {
			mustRun(t, "keygen", "--keys", keys)
		}
		if _, err := run(t, "", c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("mixmta %s: err = %v, want %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

func TestKeygenTakesKeyDirFromTheConfigDataDir(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "mixmta.yaml")
	os.WriteFile(cfg, []byte("data_dir: "+data+"\npipeline:\n  - name: deliver\n    plugin: maildir\n"), 0o644)
	mustRun(t, "-c", cfg, "keygen")
	if _, err := os.Stat(filepath.Join(data, "keys", nodes.IdentityFile)); err != nil {
		t.Errorf("keygen -c did not create DATA_DIR/keys/identity.key: %v", err)
	}
	// --keys wins over the config.
	other := filepath.Join(dir, "other")
	mustRun(t, "-c", cfg, "keygen", "--keys", other)
	if _, err := os.Stat(filepath.Join(other, nodes.IdentityFile)); err != nil {
		t.Errorf("keygen --keys did not override the config: %v", err)
	}
}
