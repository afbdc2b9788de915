package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestEveryProfileChecksOut: each ready profile in configs/ passes
// `mixmta check-config` with the real plugins.
func TestEveryProfileChecksOut(t *testing.T) {
	profiles, _ := filepath.Glob(filepath.Join(repoRoot, "configs", "*.yaml"))
	if len(profiles) < 2 {
		t.Fatalf("found %d profiles in configs/", len(profiles))
	}
	for _, p := range profiles {
		t.Run(filepath.Base(p), func(t *testing.T) {
			raw, _ := os.ReadFile(p)
			patches := map[string]any{}
			mix := strings.Contains(string(raw), "\nmix:")
			if mix {
				patches["mix.nodes_file"] = filepath.Join(t.TempDir(), "nodes.json")
			}
			cfg, _ := profile(t, "configs/"+filepath.Base(p), patches)
			if mix {
				// The operator's first steps (fog.yaml's header comment):
				// keygen, export this node's descriptor, add it.
				desc := filepath.Join(t.TempDir(), "me.json")
				if out, err := mixmta(t, "keygen", "-c", cfg); err != nil {
					t.Fatalf("keygen: %v\n%s", err, out)
				}
				out, err := mixmta(t, "node", "export", "-c", cfg)
				if err != nil {
					t.Fatalf("node export: %v\n%s", err, out)
				}
				os.WriteFile(desc, []byte(out), 0o600)
				if out, err := mixmta(t, "nodes", "add", "-c", cfg, desc); err != nil {
					t.Fatalf("nodes add: %v\n%s", err, out)
				}
			}
			out, err := mixmtaCommand(t, "check-config", "-c", cfg).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "OK") {
				t.Fatalf("check-config %s: %v\n%s", filepath.Base(p), err, out)
			}
		})
	}
}

// TestLocalProfileDeliversIntoMaildir is what `make run` serves: swaks to
// configs/local.yaml, and the sanitized message appears in
// maildir/<domain>/<user>/new.
func TestLocalProfileDeliversIntoMaildir(t *testing.T) {
	addr := freeAddr(t)
	maildir := filepath.Join(t.TempDir(), "maildir")
	cfg, data := profile(t, "configs/local.yaml", map[string]any{
		"listeners.0.address":          addr,
		"pipeline.deliver.config.path": maildir,
	})
	n := startNode(t, cfg, data, addr)
	code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr, "--from", "me@example.org", "--to", "you@example.net",
		"--header", "Subject: hello", "--header", "X-Secret: LEAK-LOCALX", "--body", "it works")
	if code != 0 {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	dir := filepath.Join(maildir, "example.net", "you", "new")
	deadline := time.Now().Add(30 * time.Second)
	var files []string
	for len(files) == 0 && time.Now().Before(deadline) {
		files, _ = filepath.Glob(filepath.Join(dir, "*"))
		time.Sleep(100 * time.Millisecond)
	}
	if len(files) != 1 {
		t.Fatalf("%d files in %s, want 1", len(files), dir)
	}
	b, _ := os.ReadFile(files[0])
	s := string(b)
	if strings.Contains(s, "LEAK-") || !strings.Contains(s, "Subject: hello") || !strings.Contains(s, "it works") || !strings.Contains(s, "nobody@remailer.invalid") {
		t.Fatalf("delivered message not sanitized as expected:\n%s", s)
	}
	fi, _ := os.Stat(files[0])
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("maildir file mode %o readable by others", fi.Mode().Perm())
	}
}

// TestMakeRunMixnetDeliversIntoMaildir is what `make run` does: `mixmta
// mixnet run` makes a 5-node mixnet from configs/local-mixnet.yaml and
// starts it; a message sent to node1 comes out sanitized in the Maildir.
func TestMakeRunMixnetDeliversIntoMaildir(t *testing.T) {
	dir := t.TempDir()
	maildir := filepath.Join(dir, "maildir")
	smtpPort, mixPort := freeRange(t, 5), freeRange(t, 5)
	prof, _ := profile(t, "configs/local-mixnet.yaml", map[string]any{
		"pipeline.deliver.config.path": maildir,
		"plugin_dir":                   binDir,
	})
	cmd := mixmtaCommand(t, "mixnet", "run", "--dir", filepath.Join(dir, "mixnet"), "--profile", prof,
		"--nodes", "5", "--smtp-port", fmt.Sprint(smtpPort), "--mix-port", fmt.Sprint(mixPort), "--authorities", "3", "--dir-port", fmt.Sprint(freeRange(t, 3)))
	logf, _ := os.Create(filepath.Join(dir, "run.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "run.log"))
			t.Logf("mixnet run log:\n%s", tailLines(string(b), 60))
		}
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	deadline := time.Now().Add(30 * time.Second)
	for !greet(addr) {
		if time.Now().After(deadline) {
			t.Fatal("node1 never listened")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var files []string
	for time.Now().Before(deadline.Add(60*time.Second)) && len(files) == 0 {
		code, out := peers.Swaks(t, "--silent", "2", "--server", addr, "--from", "me@example.org", "--to", "you@example.net",
			"--header", "Subject: hello mixnet", "--header", "X-Secret: LEAK-MAKERUN", "--body", "through the mixnet")
		if code != 0 { // paths need healthy nodes: the first probes take a moment
			t.Logf("swaks exit %d, retrying: %s", code, out)
			time.Sleep(time.Second)
			continue
		}
		for i := 0; i < 300 && len(files) == 0; i++ {
			files, _ = filepath.Glob(filepath.Join(maildir, "example.net", "you", "new", "*"))
			time.Sleep(100 * time.Millisecond)
		}
	}
	if len(files) == 0 {
		t.Fatal("nothing delivered into the Maildir")
	}
	b, _ := os.ReadFile(files[0])
	if strings.Contains(string(b), "LEAK-") || !strings.Contains(string(b), "through the mixnet") {
		t.Fatalf("delivered:\n%s", b)
	}
}
