package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// testdata/crlf-dots.eml: CRLF line endings, leading dots, 8-bit text, a
// bare LF and a trailing line without CRLF: all must be stored as given.
func loadMessage(t *testing.T, rcpts ...string) *sdk.Message {
	t.Helper()
	raw, err := os.ReadFile("testdata/crlf-dots.eml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte("\r\n\r\n")) + 4
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef", Envelope: sdk.Envelope{MailFrom: "s@example.org", RcptTo: rcpts},
		Header: raw[:i], Body: raw[i:], Size: int64(len(raw))}
}

func newTestMaildir(t *testing.T, c Config) (*maildir, string) {
	t.Helper()
	if c.Path == "" {
		c.Path = filepath.Join(t.TempDir(), "mail")
	}
	if c.Layout == "" {
		c.Layout = defaults.Layout
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	m, err := newMaildir(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.root.Close() })
	return m, c.Path
}

func deliver(t *testing.T, m *maildir, msg *sdk.Message) map[string]error {
	t.Helper()
	res, err := m.Deliver(context.Background(), msg)
	if err != nil {
		t.Fatalf("Deliver returned %v, want per-recipient results", err)
	}
	got := map[string]error{}
	for _, r := range res {
		got[r.Rcpt] = r.Err
	}
	distinct := map[string]bool{}
	for _, r := range msg.Envelope.RcptTo {
		distinct[r] = true
	}
	if len(got) != len(distinct) || len(res) != len(distinct) {
		t.Fatalf("%d results for %d distinct recipients", len(res), len(distinct))
	}
	return got
}

// files lists regular files under dir (relative paths), sorted.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestStoredBytesAreIdenticalWithPrivateModes(t *testing.T) {
	m, root := newTestMaildir(t, Config{})
	msg := loadMessage(t, "Bob@Example.ORG")
	if got := deliver(t, m, msg); got["Bob@Example.ORG"] != nil {
		t.Fatal(got["Bob@Example.ORG"])
	}
	fs := files(t, root)
	if len(fs) != 1 || !strings.HasPrefix(fs[0], "example.org/bob/new/") {
		t.Fatalf("files %q, want one in example.org/bob/new/", fs)
	}
	b, err := os.ReadFile(filepath.Join(root, fs[0]))
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]byte(nil), msg.Header...), msg.Body...); !bytes.Equal(b, want) {
		t.Fatalf("stored\n%q\nwant\n%q", b, want)
	}
	st, _ := os.Stat(filepath.Join(root, fs[0]))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	for _, d := range []string{".", "example.org", "example.org/bob", "example.org/bob/tmp", "example.org/bob/new", "example.org/bob/cur"} {
		st, err := os.Stat(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("dir %s mode %v, want 0700", d, st.Mode().Perm())
		}
	}
}

func TestLayoutsPlaceMessages(t *testing.T) {
	cases := []struct {
		layout string
		want   []string // directories of the stored files, sorted
	}{
		{layoutRecipient, []string{"example.net/carol/new", "example.org/alice/new", "example.org/bob/new"}},
		{layoutDomain, []string{"example.net/new", "example.org/new"}},
		{layoutSingle, []string{"new"}},
	}
	for _, c := range cases {
		t.Run(c.layout, func(t *testing.T) {
			m, root := newTestMaildir(t, Config{Layout: c.layout})
			got := deliver(t, m, loadMessage(t, "alice@example.org", "bob@example.org", "carol@example.net", "alice@example.org"))
			for r, err := range got {
				if err != nil {
					t.Fatalf("%s: %v", r, err)
				}
			}
			var dirs []string
			for _, f := range files(t, root) {
				dirs = append(dirs, filepath.Dir(f))
			}
			if fmt.Sprint(dirs) != fmt.Sprint(c.want) {
				t.Fatalf("files in %q, want one file in each of %q", dirs, c.want)
			}
		})
	}
}

func TestUnsafeRecipientsAreRefusedAndNothingEscapesTheRoot(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "mail")
	m, _ := newTestMaildir(t, Config{Path: root})
	cases := []string{
		"../../etc@example.org",
		"..@example.org",
		".@example.org",
		".hidden@example.org",
		"a/b@example.org",
		"a\\b@example.org",
		"a\x00b@example.org",
		"a\nb@example.org",
		"\"quoted local\"@example.org",
		"@example.org",
		strings.Repeat("x", 65) + "@example.org",
		"bob@../../etc",
		"bob@..",
		"bob@exa/mple.org",
		"bob@example.org/../..",
		"bob@[127.0.0.1]",
		"bob@",
		"no-at-sign",
		"bob@\xff.example",
	}
	for _, rcpt := range cases {
		got := deliver(t, m, loadMessage(t, rcpt))
		e := sdk.AsError(got[rcpt])
		if e == nil || e.Temporary || e.SMTPCode() != 553 || e.EnhancedCode() != "5.1.3" {
			t.Errorf("%q: want permanent 553 5.1.3, got %v", rcpt, got[rcpt])
		}
	}
	if fs := files(t, base); len(fs) != 0 {
		t.Fatalf("files written: %q", fs)
	}
	entries, _ := os.ReadDir(base)
	if len(entries) != 1 || entries[0].Name() != "mail" {
		t.Fatalf("entries beside the root: %v", entries)
	}
}

func TestSymlinkOutOfTheRootIsNotFollowed(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	m, root := newTestMaildir(t, Config{Path: filepath.Join(base, "mail")})
	if err := os.Symlink(outside, filepath.Join(root, "example.org")); err != nil {
		t.Fatal(err)
	}
	got := deliver(t, m, loadMessage(t, "bob@example.org"))
	if e := sdk.AsError(got["bob@example.org"]); e == nil || !e.Temporary {
		t.Fatalf("want a temporary failure, got %v", got["bob@example.org"])
	}
	if fs := files(t, outside); len(fs) != 0 {
		t.Fatalf("wrote through the symlink: %q", fs)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("created entries outside the root: %v", entries)
	}
}

func TestLocalDomainsRefuseOtherDomains(t *testing.T) {
	m, root := newTestMaildir(t, Config{LocalDomains: []string{"Example.ORG", "bücher.example"}})
	got := deliver(t, m, loadMessage(t, "a@example.org", "b@elsewhere.test", "c@xn--bcher-kva.example"))
	if got["a@example.org"] != nil || got["c@xn--bcher-kva.example"] != nil {
		t.Fatalf("local recipients: %v", got)
	}
	e := sdk.AsError(got["b@elsewhere.test"])
	if e == nil || e.Temporary || e.SMTPCode() != 550 || e.EnhancedCode() != "5.1.2" {
		t.Fatalf("b@elsewhere.test: want permanent 550 5.1.2, got %v", e)
	}
	if strings.Contains(e.Message, "@") || strings.Contains(e.Message, "elsewhere") {
		t.Fatalf("error message names the recipient: %q", e.Message)
	}
	if fs := files(t, root); len(fs) != 2 {
		t.Fatalf("files %q, want 2", fs)
	}
}

func TestDeliveredToIsPrependedPerRecipientOnlyWhenEnabled(t *testing.T) {
	for _, on := range []bool{false, true} {
		m, root := newTestMaildir(t, Config{Layout: layoutSingle, AddDeliveredTo: on})
		msg := loadMessage(t, "a@example.org", "b@example.org")
		deliver(t, m, msg)
		fs := files(t, root)
		want := 1
		if on {
			want = 2
		}
		if len(fs) != want {
			t.Fatalf("add_delivered_to=%v: %d files, want %d", on, len(fs), want)
		}
		var seen []string
		for _, f := range fs {
			b, _ := os.ReadFile(filepath.Join(root, f))
			rest := b
			if on {
				line, after, _ := bytes.Cut(b, []byte("\r\n"))
				seen = append(seen, string(line))
				rest = after
			}
			if !bytes.Equal(rest, append(append([]byte(nil), msg.Header...), msg.Body...)) {
				t.Fatalf("add_delivered_to=%v: message bytes changed", on)
			}
		}
		sort.Strings(seen)
		if on && fmt.Sprint(seen) != "[Delivered-To: a@example.org Delivered-To: b@example.org]" {
			t.Fatalf("Delivered-To lines %q", seen)
		}
	}
}

func TestConcurrentDeliveriesGetUniqueFiles(t *testing.T) {
	m, root := newTestMaildir(t, Config{Layout: layoutSingle})
	const workers, each = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				msg := loadMessage(t, "a@example.org")
				msg.Body = []byte(fmt.Sprintf("message %d-%d\r\n", w, i))
				res, _ := m.Deliver(context.Background(), msg)
				if res[0].Err != nil {
					errs <- res[0].Err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fs := files(t, root)
	if len(fs) != workers*each {
		t.Fatalf("%d files for %d deliveries", len(fs), workers*each)
	}
	bodies := map[string]bool{}
	for _, f := range fs {
		b, _ := os.ReadFile(filepath.Join(root, f))
		bodies[string(b)] = true
	}
	if len(bodies) != workers*each {
		t.Fatalf("%d distinct contents for %d deliveries", len(bodies), workers*each)
	}
}

func TestUniqueNameFollowsTheMaildirSpec(t *testing.T) {
	m, _ := newTestMaildir(t, Config{})
	m.host = sanitizeHost("host/with:odd,chars")
	re := regexp.MustCompile(`^\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.host\\057with\\072odd\\054chars$`)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		n := m.uniqueName()
		if !re.MatchString(n) {
			t.Fatalf("name %q does not match %s", n, re)
		}
		if seen[n] {
			t.Fatalf("name %q repeated", n)
		}
		seen[n] = true
	}
}

func TestFsyncFailureLeavesNothingDelivered(t *testing.T) {
	m, root := newTestMaildir(t, Config{Layout: layoutSingle})
	deliver(t, m, loadMessage(t, "warmup@example.org")) // create the Maildir
	os.Remove(filepath.Join(root, files(t, root)[0]))
	m.ops.syncFile = func(*os.File) error {
		return &os.PathError{Op: "fsync", Path: "x", Err: errors.New("input/output error")}
	}
	got := deliver(t, m, loadMessage(t, "a@example.org"))
	if e := sdk.AsError(got["a@example.org"]); e == nil || !e.Temporary {
		t.Fatalf("want a temporary failure, got %v", got["a@example.org"])
	}
	if fs := files(t, root); len(fs) != 0 {
		t.Fatalf("files left after a failed fsync: %q", fs)
	}
}

func TestNewDirSyncFailureTakesTheMessageBack(t *testing.T) {
	m, root := newTestMaildir(t, Config{Layout: layoutSingle})
	deliver(t, m, loadMessage(t, "warmup@example.org"))
	os.Remove(filepath.Join(root, files(t, root)[0]))
	m.ops.syncDir = func(*os.File) error { return errors.New("fsync failed") }
	got := deliver(t, m, loadMessage(t, "a@example.org"))
	if e := sdk.AsError(got["a@example.org"]); e == nil || !e.Temporary {
		t.Fatalf("want a temporary failure, got %v", got["a@example.org"])
	}
	if fs := files(t, root); len(fs) != 0 {
		t.Fatalf("files left after a failed directory fsync: %q", fs)
	}
}

func TestDurabilityStepsRunInOrder(t *testing.T) {
	m, root := newTestMaildir(t, Config{Layout: layoutSingle})
	deliver(t, m, loadMessage(t, "warmup@example.org"))
	os.Remove(filepath.Join(root, files(t, root)[0]))
	var steps []string
	count := func(sub string) int { e, _ := os.ReadDir(filepath.Join(root, sub)); return len(e) }
	m.ops.syncFile = func(f *os.File) error {
		steps = append(steps, fmt.Sprintf("fsync file (tmp=%d new=%d)", count("tmp"), count("new")))
		return f.Sync()
	}
	m.ops.syncDir = func(f *os.File) error {
		steps = append(steps, fmt.Sprintf("fsync %s (tmp=%d new=%d)", filepath.Base(f.Name()), count("tmp"), count("new")))
		return f.Sync()
	}
	deliver(t, m, loadMessage(t, "a@example.org"))
	want := "[fsync file (tmp=1 new=0) fsync new (tmp=0 new=1)]"
	if fmt.Sprint(steps) != want {
		t.Fatalf("steps %q, want %s", steps, want)
	}
}

func TestRemovedMaildirIsCreatedAgain(t *testing.T) {
	m, root := newTestMaildir(t, Config{})
	deliver(t, m, loadMessage(t, "a@example.org"))
	if err := os.RemoveAll(filepath.Join(root, "example.org")); err != nil {
		t.Fatal(err)
	}
	if got := deliver(t, m, loadMessage(t, "a@example.org")); got["a@example.org"] != nil {
		t.Fatal(got["a@example.org"])
	}
	if fs := files(t, root); len(fs) != 1 {
		t.Fatalf("files %q, want 1", fs)
	}
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct{ json, key string }{
		{`{"path":"/tmp/x"}`, ""},
		{`{}`, "path"},
		{`{"path":"/tmp/x","layout":"flat"}`, "layout"},
		{`{"path":"/tmp/x","local_domains":["ok.example","bad..example"]}`, "local_domains"},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		if c.key == "" && err != nil || c.key != "" && (!errors.As(err, &fe) || fe.Field != c.key) {
			t.Errorf("%s: want error on %q, got %v", c.json, c.key, err)
		}
	}
}
