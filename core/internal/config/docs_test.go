package config

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

const docsFile = "../../../docs/configuration.md"

// configKeys returns every key of the pipeline file as the reference
// writes it: "listeners[].relay.rate_limit.per", "plugins.NAME.sha256".
func configKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		p := tag
		if prefix != "" {
			p = prefix + "." + tag
		}
		out = append(out, p)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft == rawBlockType || ft == durationType || ft == prefixType:
		case ft.Kind() == reflect.Struct:
			out = append(out, configKeys(ft, p)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && ft.Elem() != rawBlockType:
			out = append(out, configKeys(ft.Elem(), p+"[]")...)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out = append(out, configKeys(ft.Elem(), p+".NAME")...)
		}
	}
	return out
}

// docRows returns the key tables of the reference: key -> default cell.
func docRows(t *testing.T) (map[string]string, string) {
	t.Helper()
	b, err := os.ReadFile(docsFile)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| ([^|]+) \\| ([^|]+) \\| ")
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		if _, dup := rows[m[1]]; dup {
			t.Errorf("%s: key %s has two rows", docsFile, m[1])
		}
		rows[m[1]] = strings.TrimSpace(m[3])
	}
	return rows, string(b)
}

func TestDocsListEveryKey(t *testing.T) {
	rows, _ := docRows(t)
	keys := configKeys(reflect.TypeFor[Config](), "")
	for _, k := range keys {
		if _, ok := rows[k]; !ok {
			t.Errorf("%s has no table row for key `%s`", docsFile, k)
		}
	}
	for k := range rows {
		if !slices.Contains(keys, k) {
			t.Errorf("%s documents `%s`, which is not a key of Config", docsFile, k)
		}
	}
}

// valueAt follows a reference key path in v: "[]" is item 0, ".NAME" the
// map entry "NAME".
func valueAt(v reflect.Value, key string) reflect.Value {
	key = strings.ReplaceAll(key, "[]", ".[]")
	for _, part := range strings.Split(key, ".") {
		for v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		switch {
		case part == "[]":
			v = v.Index(0)
		case v.Kind() == reflect.Map:
			v = v.MapIndex(reflect.ValueOf(part))
		default:
			for i := range v.NumField() {
				if v.Type().Field(i).Tag.Get("yaml") == part {
					v = v.Field(i)
					break
				}
			}
		}
	}
	return v
}

// fill allocates every nil pointer in v, gives every list of mappings one
// item and every map of mappings the entry "NAME", recursively, so that
// every key of the reference has a value to compare.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		fill(v.Elem())
	case reflect.Struct:
		if v.Type() == rawBlockType || v.Type() == prefixType {
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Struct && v.Len() == 0 {
			v.Set(reflect.MakeSlice(v.Type(), 1, 1))
			fill(v.Index(0))
		}
	case reflect.Map:
		if v.Type().Elem().Kind() == reflect.Struct && v.Len() == 0 {
			e := reflect.New(v.Type().Elem()).Elem()
			fill(e)
			v.Set(reflect.MakeMap(v.Type()))
			v.SetMapIndex(reflect.ValueOf("NAME"), e)
		}
	}
}

func formatDefault(v reflect.Value) (string, bool) {
	if v.Type() == durationType {
		return fmtDur(sdk.Duration(v.Int())), true
	}
	switch v.Kind() {
	case reflect.String:
		if v.String() == "" {
			return `""`, true
		}
		return v.String(), true
	case reflect.Int, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10), true
	case reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64), true
	case reflect.Bool:
		return strconv.FormatBool(v.Bool()), true
	}
	return "", false
}

// The Default column of the reference is what SetDefaults fills in: a
// `literal` equals the default, "—" means no default (zero).
func TestDocsDefaultsMatchCode(t *testing.T) {
	rows, _ := docRows(t)
	// Every optional section present once, with nothing set in it.
	c := &Config{}
	fill(reflect.ValueOf(c).Elem())
	c.SetDefaults()
	checked := 0
	for key, cell := range rows {
		got, scalar := formatDefault(valueAt(reflect.ValueOf(c).Elem(), key))
		switch {
		case !scalar:
		case cell == "—":
			if got != `""` && got != "0" && got != "0s" && got != "false" {
				t.Errorf("`%s`: documented without default, but SetDefaults gives %s", key, got)
			}
			checked++
		case strings.HasPrefix(cell, "`"):
			want := strings.SplitN(cell, "`", 3)[1]
			if got != want {
				t.Errorf("`%s`: documented default %s, SetDefaults gives %s", key, want, got)
			}
			checked++
		}
	}
	if checked < 40 {
		t.Errorf("only %d defaults checked; the table format changed?", checked)
	}
}

// The reference's full example is valid and sets every key.
func TestDocsFullExampleSetsEveryKey(t *testing.T) {
	_, doc := docRows(t)
	_, after, ok := strings.Cut(doc, "## Full example")
	if !ok {
		t.Fatal("no ## Full example section")
	}
	_, after, _ = strings.Cut(after, "```yaml\n")
	example, _, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatal("no ```yaml block in ## Full example")
	}
	c, err := Parse("example.yaml", []byte(example))
	if err != nil {
		t.Fatalf("the full example does not parse:\n%v", err)
	}
	for _, k := range configKeys(reflect.TypeFor[Config](), "") {
		path := strings.ReplaceAll(strings.ReplaceAll(k, "[]", "[0]"), ".NAME", ".onionmx")
		if !c.isSet(path) {
			t.Errorf("the full example does not set `%s`", k)
		}
	}
}
