package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// sampleConfig is a plugin config with every shape a schema can take.
type sampleConfig struct {
	RelayHost string       `json:"relay_host" required:"true" doc:"host:port"`
	Timeout   sdk.Duration `json:"timeout"`
	Retries   int          `json:"retries"`
	Ratio     float64      `json:"ratio"`
	Verbose   bool         `json:"verbose"`
	TLS       struct {
		Policy     string `json:"policy" required:"true"`
		MinVersion string `json:"min_version"`
	} `json:"tls"`
	Allow  []string            `json:"allow"`
	Delays []sdk.Duration      `json:"delays"`
	Static map[string][]string `json:"static"`
	Ports  map[string]int      `json:"ports"`
}

// schemaAsCoreSees returns the schema of v after the JSON trip from the
// plugin to the core (pluginclient.Client decodes it this way).
func schemaAsCoreSees(t *testing.T, v any) *sdk.Schema {
	t.Helper()
	b, err := json.Marshal(sdk.SchemaOf(v))
	if err != nil {
		t.Fatal(err)
	}
	s := new(sdk.Schema)
	if err := json.Unmarshal(b, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// stageFrom parses a pipeline file whose only stage "deliver" (plugin
// "sample", at line 2) has block as its config; the block's first line is
// line 5 of the file.
func stageFrom(t *testing.T, block string) Stage {
	t.Helper()
	src := "pipeline:\n  - name: deliver\n    plugin: sample\n"
	if block != "" {
		src += "    config:\n"
		for _, l := range strings.Split(strings.TrimSuffix(block, "\n"), "\n") {
			src += "      " + l + "\n"
		}
	}
	c, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%s\n%v", src, err)
	}
	return c.Pipeline[0]
}

func TestValidateBlockAgainstPluginSchema(t *testing.T) {
	schema := schemaAsCoreSees(t, sampleConfig{})
	const pre = `p.yaml:%d: stage "deliver" (plugin sample): `
	cases := []struct {
		name  string
		block string
		want  []string // error lines; none for a valid block
	}{
		{"every shape valid", `relay_host: 127.0.0.1:25
timeout: 30s
retries: 3
ratio: 0.5
verbose: true
tls: {policy: require, min_version: "1.2"}
allow: [From, To]
delays: [1m, 2d]
static:
  example.org: [a.onion, b.onion]
ports: {smtp: 25}`, nil},
		{"number accepts an integer", "relay_host: h:25\nratio: 2", nil},
		{"key with no value is the default", "relay_host: h:25\ntimeout:\nretries:", nil},
		{"unknown top key lists known keys", "relay_host: h:25\nrelay_hots: x",
			[]string{fmt.Sprintf(pre, 6) + `unknown key "relay_hots" (known: allow, delays, ports, ratio, relay_host, retries, static, timeout, tls, verbose)`}},
		{"unknown nested key names its parent", "relay_host: h:25\ntls:\n  policy: require\n  polcy: x",
			[]string{fmt.Sprintf(pre, 8) + `unknown key "polcy" in tls (known: min_version, policy)`}},
		{"bad duration", "relay_host: h:25\ntimeout: abc",
			[]string{fmt.Sprintf(pre, 6) + `timeout: expected a duration like "30s", got "abc"`}},
		{"duration without unit", "relay_host: h:25\ntimeout: 30",
			[]string{fmt.Sprintf(pre, 6) + `timeout: expected a duration like "30s", got 30`}},
		{"bad duration in list", "relay_host: h:25\ndelays:\n  - 1m\n  - soon",
			[]string{fmt.Sprintf(pre, 8) + `delays.1: expected a duration like "30s", got "soon"`}},
		{"integer rejects float", "relay_host: h:25\nretries: 1.5",
			[]string{fmt.Sprintf(pre, 6) + `retries: expected an integer, got 1.5`}},
		{"integer rejects string", "relay_host: h:25\nretries: \"3\"",
			[]string{fmt.Sprintf(pre, 6) + `retries: expected an integer, got "3"`}},
		{"number rejects infinity", "relay_host: h:25\nratio: .inf",
			[]string{fmt.Sprintf(pre, 6) + `ratio: expected a number, got .inf`}},
		{"boolean rejects yes", "relay_host: h:25\nverbose: yes",
			[]string{fmt.Sprintf(pre, 6) + `verbose: expected true or false, got "yes"`}},
		{"string rejects number", "relay_host: 25",
			[]string{fmt.Sprintf(pre, 5) + `relay_host: expected a string, got 25 (put it in quotes: "25")`}},
		{"list expected", "relay_host: h:25\nallow: From",
			[]string{fmt.Sprintf(pre, 6) + `allow: expected a list, got "From"`}},
		{"map value checked", "relay_host: h:25\nports:\n  smtp: 25\n  submission: x",
			[]string{fmt.Sprintf(pre, 8) + `ports.submission: expected an integer, got "x"`}},
		{"map of lists checked", "relay_host: h:25\nstatic:\n  example.org: a.onion",
			[]string{fmt.Sprintf(pre, 7) + `static.example.org: expected a list, got "a.onion"`}},
		{"missing required at top is at config key", "timeout: 1m",
			[]string{fmt.Sprintf(pre, 4) + `missing required key "relay_host"`}},
		{"required with no value is missing", "relay_host:",
			[]string{fmt.Sprintf(pre, 4) + `missing required key "relay_host"`}},
		{"missing required nested is at its key", "relay_host: h:25\ntls:\n  min_version: \"1.3\"",
			[]string{fmt.Sprintf(pre, 6) + `tls: missing required key "policy"`}},
		{"absent block misses required at stage line", "",
			[]string{fmt.Sprintf(pre, 2) + `missing required key "relay_host"`}},
		{"every error reported in line order", "relay_hots: x\nretries: x\ntls: 5",
			[]string{
				fmt.Sprintf(pre, 4) + `missing required key "relay_host"`,
				fmt.Sprintf(pre, 5) + `unknown key "relay_hots" (known: allow, delays, ports, ratio, relay_host, retries, static, timeout, tls, verbose)`,
				fmt.Sprintf(pre, 6) + `retries: expected an integer, got "x"`,
				fmt.Sprintf(pre, 7) + `tls: expected a mapping of keys, got 5`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateBlock("p.yaml", stageFrom(t, tc.block), schema)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if want := strings.Join(tc.want, "\n"); got != want {
				t.Errorf("want:\n%s\ngot:\n%s", want, got)
			}
		})
	}
}

func TestValidateBlockPluginWithoutSettingsTakesNoKeys(t *testing.T) {
	schema := schemaAsCoreSees(t, struct{}{})
	if err := ValidateBlock("p.yaml", stageFrom(t, ""), schema); err != nil {
		t.Errorf("no block: want no error, got %v", err)
	}
	err := ValidateBlock("p.yaml", stageFrom(t, "x: 1"), schema)
	want := `p.yaml:5: stage "deliver" (plugin sample): unknown key "x" (none: the plugin takes no settings here)`
	if err == nil || err.Error() != want {
		t.Errorf("want:\n%s\ngot:\n%v", want, err)
	}
}

func TestValidateBlockNilSchemaAcceptsAnything(t *testing.T) {
	if err := ValidateBlock("p.yaml", stageFrom(t, "anything: [1, {b: c}]"), nil); err != nil {
		t.Errorf("want no error, got %v", err)
	}
}

// A block that passes ValidateBlock, turned into JSON by BlockJSON, is
// accepted by the plugin's own strict decoder with the intended values.
func TestBlockJSONDecodesInPluginAsWritten(t *testing.T) {
	st := stageFrom(t, `relay_host: 127.0.0.1:25
timeout: 1h30m
retries: 0x10
ratio: 1e-3
verbose: true
tls: {policy: require}
allow: [From, "2001-12-14"]
delays: [90s, 2d]
static:
  example.org: [a.onion]
ports: {smtp: 25}`)
	if err := ValidateBlock("p.yaml", st, schemaAsCoreSees(t, sampleConfig{})); err != nil {
		t.Fatal(err)
	}
	b, err := BlockJSON(st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sdk.DecodeConfig(sampleConfig{}, b)
	if err != nil {
		t.Fatalf("plugin-side decode of %s: %v", b, err)
	}
	want := sampleConfig{RelayHost: "127.0.0.1:25", Timeout: sdk.Duration(90 * time.Minute), Retries: 16, Ratio: 0.001, Verbose: true,
		Allow: []string{"From", "2001-12-14"}, Delays: []sdk.Duration{sdk.Duration(90 * time.Second), sdk.Duration(48 * time.Hour)},
		Static: map[string][]string{"example.org": {"a.onion"}}, Ports: map[string]int{"smtp": 25}}
	want.TLS.Policy = "require"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("JSON %s\nwant %+v\ngot  %+v", b, want, got)
	}
}

func TestBlockJSON(t *testing.T) {
	cases := []struct{ block, want string }{
		{"", `{}`},
		{"a: 1\nb: 30s\nc: [x, 2, 2.5, true, null]\nd: {e: -3}", `{"a":1,"b":"30s","c":["x",2,2.5,true,null],"d":{"e":-3}}`},
		{"z: 1\na: 2", `{"z":1,"a":2}`},
		{"big: 18446744073709551615", `{"big":18446744073709551615}`},
		{"q: \"1\"\nn: 0o17\nh: 0x1F", `{"q":"1","n":15,"h":31}`},
		{"s: \"tab\\there \\\"q\\\" \\u00e9\"", `{"s":"tab\there \"q\" é"}`},
		{"empty:", `{"empty":null}`},
	}
	for _, tc := range cases {
		got, err := BlockJSON(stageFrom(t, tc.block))
		if err != nil || string(got) != tc.want {
			t.Errorf("block %q: want %s, got %s (err %v)", tc.block, tc.want, got, err)
		}
	}
	_, err := BlockJSON(stageFrom(t, "x: .nan"))
	if err == nil || !strings.Contains(err.Error(), `stage "deliver"`) || !strings.Contains(err.Error(), "line 5") {
		t.Errorf("NaN: want an error naming the stage and line 5, got %v", err)
	}
}

func TestKeyLineFindsKeyOrNearestParent(t *testing.T) {
	st := stageFrom(t, `relay_host: h:25
tls:
  policy: require
allow:
  - From
  - To
  - Subject
static:
  example.org: [a.onion]`)
	cases := []struct {
		path string
		line int
	}{
		{"relay_host", 5},
		{"tls", 6},
		{"tls.policy", 7},
		{"allow", 8},
		{"allow.2", 11},
		{"allow.9", 8},             // no such item: the list
		{"tls.min_version", 6},     // absent: its parent
		{"static.example.org", 13}, // map key with dots
		{"static.example.org.0", 13},
		{"nothing", 4}, // the config: key
		{"", 4},
	}
	for _, tc := range cases {
		if got := st.KeyLine(tc.path); got != tc.line {
			t.Errorf("KeyLine(%q): want %d, got %d", tc.path, tc.line, got)
		}
	}
	if got := stageFrom(t, "").KeyLine("x"); got != 2 {
		t.Errorf("no config block: want the stage's line 2, got %d", got)
	}
}

func TestStageErrorPointsAtFieldLine(t *testing.T) {
	st := stageFrom(t, "relay_host: h:25\ntls:\n  policy: maybe")
	err := StageError("p.yaml", st, sdk.FieldErrorf("tls.policy", "must be require or opportunistic"))
	want := `p.yaml:7: stage "deliver" (plugin sample): tls.policy: must be require or opportunistic`
	if err.Error() != want {
		t.Errorf("want %s\ngot  %s", want, err)
	}
	err = StageError("p.yaml", st, errors.New("cannot open key file"))
	want = `p.yaml:4: stage "deliver" (plugin sample): cannot open key file`
	if err.Error() != want {
		t.Errorf("want %s\ngot  %s", want, err)
	}
}
