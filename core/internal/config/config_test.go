package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func TestMain(m *testing.M) {
	// git keeps no file modes but the executable bit; a users file must
	// be 0600 to load.
	if err := os.Chmod("testdata/files/users", 0o600); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

var update = flag.Bool("update", false, "rewrite testdata/valid/*.golden and testdata/invalid/*.err from the current output")

// checkGolden compares got with the file golden, or rewrites it with -update.
func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s\nwant:\n%s\ngot:\n%s", golden, want, got)
	}
}

// Each testdata/valid/NAME.yaml loads, and the defaulted Config, as JSON,
// is exactly testdata/valid/NAME.golden.
func TestValidFilesLoadToGoldenConfig(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/valid/*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load: want no error, got:\n%v", err)
			}
			got, err := json.MarshalIndent(c, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, strings.TrimSuffix(f, ".yaml")+".golden", append(got, '\n'))
		})
	}
}

// Each testdata/invalid/NAME.yaml fails to load with exactly the lines of
// testdata/invalid/NAME.err ("FILE:LINE: message").
func TestInvalidFilesFailWithFileLineError(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/invalid/*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f)
			if err == nil {
				t.Fatal("Load: want an error, got none")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "testdata/") {
					t.Errorf("error line does not start with a file name: %q", line)
				}
			}
			checkGolden(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(err.Error()+"\n"))
		})
	}
}

func TestParseErrorIsErrorListOfFileLineErrors(t *testing.T) {
	_, err := Parse("p.yaml", []byte("pipeline:\n  - name: a\n    plugin: b\nqueue:\n  workers: x\n"))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("want an ErrorList of 1, got %T %v", err, err)
	}
	var first *Error
	if !errors.As(err, &first) {
		t.Fatalf("errors.As(*Error) failed on %v", err)
	}
	if want := (Error{File: "p.yaml", Line: 5, Msg: `queue.workers: expected an integer, got "x"`}); *first != want {
		t.Errorf("want %+v, got %+v", want, *first)
	}
}

func TestLoadReportsMissingFileAsOSError(t *testing.T) {
	_, err := Load("testdata/no-such-file.yaml")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("want an os.ErrNotExist error, got %v", err)
	}
}

func TestParseDoesNotTouchFileSystem(t *testing.T) {
	src := "listeners:\n  - address: 127.0.0.1:25\n    tls: {cert_file: /nonexistent/c, key_file: /nonexistent/k}\npipeline:\n  - {name: a, plugin: b}\n"
	if _, err := Parse("p.yaml", []byte(src)); err != nil {
		t.Errorf("Parse must leave file checks to Load; got %v", err)
	}
	f := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(f)
	if err == nil || !strings.Contains(err.Error(), f+":3: listeners[0].tls.cert_file: cannot read \"/nonexistent/c\"") {
		t.Errorf("Load: want the unreadable cert_file at line 3, got %v", err)
	}
}

func TestSetDefaultsFillsDocumentedValues(t *testing.T) {
	c := &Config{Listeners: []Listener{{Address: "127.0.0.1:25", Relay: Relay{RateLimit: &RateLimit{Messages: 7}}}}}
	c.SetDefaults()
	l := c.Listeners[0]
	cases := []struct {
		name      string
		got, want any
	}{
		{"hostname", c.Hostname, "mixmta.invalid"},
		{"data_dir", c.DataDir, "./var/data"},
		{"plugin_dir", c.PluginDir, "./bin"},
		{"log.level", c.Log.Level, "info"},
		{"log.stats_interval", c.Log.StatsInterval.D(), time.Minute},
		{"queue.max_lifetime", c.Queue.MaxLifetime.D(), 5 * 24 * time.Hour},
		{"queue.gc_interval", c.Queue.GCInterval.D(), 5 * time.Minute},
		{"queue.workers", c.Queue.Workers, 8},
		{"scheduler.window", c.Scheduler.Window.D(), time.Second},
		{"scheduler.min_pool", c.Scheduler.MinPool, 0},
		{"scheduler.send_fraction", c.Scheduler.SendFraction, 1.0},
		{"scheduler.max_batch", c.Scheduler.MaxBatch, 0},
		{"scheduler.concurrency", c.Scheduler.Concurrency, 16},
		{"retry.max_attempts", c.Retry.MaxAttempts, 9},
		{"retry.base", c.Retry.Base.D(), 2 * time.Second},
		{"retry.factor", c.Retry.Factor, 2.0},
		{"retry.max", c.Retry.Max.D(), time.Hour},
		{"retry.jitter", c.Retry.Jitter, 0.2},
		{"retry.bounce", c.Retry.Bounce, false},
		{"listeners[0].name", l.Name, "127.0.0.1:25"},
		{"listeners[0].max_message_bytes", l.MaxMessageBytes, int64(25 << 20)},
		{"listeners[0].max_recipients", l.MaxRecipients, 100},
		{"listeners[0].max_line_length", l.MaxLineLength, 4000},
		{"listeners[0].max_header_bytes", l.MaxHeaderBytes, int64(1 << 20)},
		{"listeners[0].max_header_fields", l.MaxHeaderFields, 1000},
		{"listeners[0].read_timeout", l.ReadTimeout.D(), 5 * time.Minute},
		{"listeners[0].write_timeout", l.WriteTimeout.D(), time.Minute},
		{"listeners[0].max_sessions", l.MaxSessions, 100},
		{"listeners[0].relay.rate_limit.burst", l.Relay.RateLimit.Burst, 7},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("%s: want %v, got %v", tc.name, tc.want, tc.got)
		}
	}
	before, _ := json.Marshal(c)
	c.SetDefaults()
	if after, _ := json.Marshal(c); !bytes.Equal(before, after) {
		t.Errorf("SetDefaults is not idempotent:\nfirst  %s\nsecond %s", before, after)
	}
}

func TestExplicitZeroIsKeptNotDefaulted(t *testing.T) {
	c, err := Parse("p.yaml", []byte("retry:\n  jitter: 0\npipeline:\n  - {name: a, plugin: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Retry.Jitter != 0 {
		t.Errorf("retry.jitter: 0 written, want 0, got %g", c.Retry.Jitter)
	}
	c, err = Parse("p.yaml", []byte("retry:\n  jitter:\npipeline:\n  - {name: a, plugin: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Retry.Jitter != 0.2 {
		t.Errorf("retry.jitter with no value, want default 0.2, got %g", c.Retry.Jitter)
	}
}

func TestStageLineIsLineOfStageItem(t *testing.T) {
	c, err := Parse("p.yaml", []byte("pipeline:\n  - name: a\n    plugin: b\n\n  - plugin: c\n    name: d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := []int{c.Pipeline[0].Line, c.Pipeline[1].Line}; got[0] != 2 || got[1] != 5 {
		t.Errorf("want stage lines [2 5], got %v", got)
	}
}

func TestLineOfKeyOrNearestParent(t *testing.T) {
	c, err := Parse("p.yaml", []byte("listeners:\n  - address: 127.0.0.1:25\n    relay:\n      anyone: false\npipeline:\n  - {name: a, plugin: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		line int
	}{
		{"listeners[0].relay.anyone", 4},
		{"listeners[0].relay.networks", 3}, // not written: its parent
		{"listeners[0].address", 2},
		{"pipeline[0].plugin", 6},
		{"pipeline", 5},
		{"nothing.here", 1},
	}
	for _, tc := range cases {
		if got := c.Line(tc.path); got != tc.line {
			t.Errorf("Line(%q): want %d, got %d", tc.path, tc.line, got)
		}
	}
}

func TestIsLocalDomainIgnoresCaseAndTrailingDot(t *testing.T) {
	l := Listener{LocalDomains: []string{"Mix.Example.org"}}
	for _, d := range []string{"mix.example.org", "MIX.EXAMPLE.ORG.", "mix.example.org"} {
		if !l.IsLocalDomain(d) {
			t.Errorf("IsLocalDomain(%q): want true", d)
		}
	}
	for _, d := range []string{"example.org", "sub.mix.example.org", ""} {
		if l.IsLocalDomain(d) {
			t.Errorf("IsLocalDomain(%q): want false", d)
		}
	}
}

func TestSyntaxErrorLineIsWhereTextStopsBeingYAML(t *testing.T) {
	cases := []struct {
		name, src string
		line      int
	}{
		{"flow list not closed", "a: 1\nb: [1, 2\nc: 3\n", 2},
		{"key less indented", "a:\n  b: 1\n c: 2\n", 3},
		{"mapping after list item", "a:\n  - x\n  y: 2\n", 3},
		{"tab in indentation", "a: 1\nb:\n  c: 2\n\td: 3\n", 4},
		{"unknown alias", "a: 1\nb: *nope\n", 2},
		{"control character", "a: 1\nb: \x01\n", 2},
		{"invalid UTF-8", "a: 1\nb: \xff\n", 2},
		{"error in second document", "a: 1\n---\nb: [\n", 3},
	}
	for _, tc := range cases {
		_, err := Parse("p.yaml", []byte(tc.src))
		var e *Error
		if !errors.As(err, &e) || e.Line != tc.line {
			t.Errorf("%s: want an error at line %d, got %v", tc.name, tc.line, err)
		}
	}
}

// FuzzParse: no input makes Parse panic, and every line of every error
// starts with the file name.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("pipeline:\n  - {name: a, plugin: b, config: {x: [1, {y: *z}]}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml:") {
					t.Fatalf("error line without file name: %q", line)
				}
			}
			return
		}
		schema := sdk.SchemaOf(struct {
			A int                 `json:"a" required:"true"`
			B []sdk.Duration      `json:"b"`
			C map[string][]string `json:"c"`
		}{})
		for _, st := range c.Pipeline {
			b, err := BlockJSON(st)
			if err != nil && !strings.Contains(err.Error(), st.Name) {
				t.Fatalf("BlockJSON error does not name the stage: %v", err)
			}
			if err == nil && !json.Valid(b) {
				t.Fatalf("BlockJSON gave invalid JSON %q", b)
			}
			if err := ValidateBlock("fuzz.yaml", st, schema); err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					if !strings.HasPrefix(line, "fuzz.yaml:") {
						t.Fatalf("ValidateBlock error line without file name: %q", line)
					}
				}
			}
			for _, p := range []string{"a", "b.0", "c.x.1", "", "..", "a.b.c.d"} {
				if l := st.KeyLine(p); l < 1 {
					t.Fatalf("KeyLine(%q) = %d", p, l)
				}
			}
		}
	})
}

func TestCRLFAndByteOrderMarkAreAccepted(t *testing.T) {
	src := "\ufeffhostname: mix.example.org\r\npipeline:\r\n  - name: a\r\n    plugin: b\r\n  - name: a\r\n    plugin: c\r\n"
	_, err := Parse("p.yaml", []byte(src))
	want := `p.yaml:5: pipeline[1].name: duplicate stage name "a" (first at line 3)`
	if err == nil || err.Error() != want {
		t.Errorf("want %s\ngot  %v", want, err)
	}
}
