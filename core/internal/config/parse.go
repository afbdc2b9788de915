package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
)

// Load reads and parses the pipeline file at path (see Parse), then checks
// the files it names: TLS certificate and key, AUTH users file and
// destination block file must be readable, and the block file must parse.
// Relative paths are taken from the working directory. A read error of
// path itself is returned as is; every other error is an ErrorList.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if err := c.checkFiles(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes one pipeline file strictly, fills defaults (SetDefaults)
// and validates it, without touching the file system. path only names the
// file in errors and in Config.Path. The error, if any, is an ErrorList:
// every problem found, each as "PATH:LINE: message", where LINE is that of
// the offending key or value.
//
// Rejected: an empty file, more than one YAML document, YAML aliases,
// explicit tags other than the core ones, duplicate keys, unknown keys,
// values of the wrong type, and every value out of the range its doc in
// config.go gives. Decoding stops before validation if it found errors,
// so that one mistake is reported once.
func Parse(path string, data []byte) (*Config, error) {
	e := &errs{file: path}
	root := parseYAML(e, data)
	if root == nil {
		return nil, e.list.err()
	}
	checkTree(e, root)
	c := &Config{}
	d := &decoder{errs: e, lines: map[string]int{}, unset: map[string]bool{}}
	d.value(root, reflect.ValueOf(c).Elem(), "")
	if len(e.list) > 0 {
		return nil, e.list.err()
	}
	c.Path, c.lines, c.unset = path, d.lines, d.unset
	c.SetDefaults()
	c.validate(e)
	if len(e.list) > 0 {
		return nil, e.list.err()
	}
	return c, nil
}

// parseYAML returns the root node of the single document in data, or nil
// after adding the reason to e.
func parseYAML(e *errs, data []byte) *yaml.Node {
	if !utf8.Valid(data) {
		i := 0
		for i < len(data) {
			r, n := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		e.add(lineAt(data, i), "not valid UTF-8 (save the file as UTF-8)")
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := safeDecode(dec, &doc)
	if err == io.EOF || err == nil && isEmptyDoc(&doc) {
		e.add(1, "empty file: a pipeline file needs at least a pipeline: list of stages")
		return nil
	}
	if err != nil {
		syntaxError(e, data, err)
		return nil
	}
	var next yaml.Node
	switch err := safeDecode(dec, &next); {
	case err == io.EOF:
	case err != nil:
		syntaxError(e, data, err)
		return nil
	default:
		e.add(next.Line, "a second YAML document starts here; a pipeline file holds exactly one (remove the ---)")
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		e.add(root.Line, "the top level must be a mapping of keys (hostname:, listeners:, pipeline:, ...), got %s", describe(root))
		return nil
	}
	return root
}

func isEmptyDoc(doc *yaml.Node) bool {
	return len(doc.Content) == 0 || doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].ShortTag() == "!!null"
}

// safeDecode turns a panic inside the YAML library into an error: the
// input is untrusted text, and a parser bug must not take the daemon down.
func safeDecode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failed: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): `)

// syntaxError reports a YAML syntax error at the line where the text stops
// being valid YAML. yaml.v3 reports the line where the enclosing construct
// began (often line 1), so the line is found again: it is the one after
// the longest prefix of whole lines that still parses.
func syntaxError(e *errs, data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	if l := firstBadLine(data); l > 0 {
		line = l
	}
	if strings.Contains(msg, "tab character") || strings.Contains(msg, "cannot start any token") {
		if indentHasTab(data, line) {
			msg = "tab character in indentation (YAML indents with spaces only)"
		}
	}
	if msg == "found unexpected end of stream" {
		msg += " (a quote or bracket opened here is not closed)"
	}
	e.add(line, "YAML syntax error: %s", msg)
}

// firstBadLine returns the 1-based line after the longest prefix of whole
// lines of data that parses, or 0 if that takes too long to find (then
// yaml's own line is used).
func firstBadLine(data []byte) int {
	// Each try parses up to len(data) bytes; stop after about 16 MiB.
	budget := 16 << 20
	ends := []int{0}
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if ends[len(ends)-1] != len(data) {
		ends = append(ends, len(data))
	}
	// ends[k] is the length of the first k lines; the whole file fails.
	for k := len(ends) - 2; k >= 0; k-- {
		if budget -= ends[k] + 64; budget < 0 {
			return 0
		}
		if parses(data[:ends[k]]) {
			return k + 1
		}
	}
	return 0
}

func parses(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		switch err := safeDecode(dec, &n); {
		case err == io.EOF:
			return true
		case err != nil:
			return false
		}
	}
}

func indentHasTab(data []byte, line int) bool {
	lines := bytes.Split(data, []byte("\n"))
	if line < 1 || line > len(lines) {
		return false
	}
	l := lines[line-1]
	indent := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]
	return bytes.IndexByte(indent, '\t') >= 0
}

// lineAt returns the 1-based line of byte offset off.
func lineAt(data []byte, off int) int {
	return 1 + bytes.Count(data[:min(off, len(data))], []byte("\n"))
}

// coreTags are the only tags accepted: the ones YAML resolves on its own.
var coreTags = map[string]bool{"!!str": true, "!!int": true, "!!float": true, "!!bool": true, "!!null": true, "!!map": true, "!!seq": true, "!!timestamp": true}

// checkTree rejects, anywhere in the document (stage config blocks
// included), what a plain configuration has no use for and what would
// make it ambiguous: aliases, unusual tags, non-scalar or duplicate keys.
func checkTree(e *errs, n *yaml.Node) {
	switch n.Kind {
	case yaml.AliasNode:
		e.add(n.Line, "YAML aliases (*%s) are not supported here; write the value out", n.Value)
		return
	case yaml.ScalarNode, yaml.MappingNode, yaml.SequenceNode:
		if t := n.ShortTag(); !coreTags[t] {
			e.add(n.Line, "YAML tag %s is not supported here", t)
			return
		}
	}
	if n.Kind == yaml.MappingNode {
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.ShortTag() == "!!merge" {
				e.add(k.Line, "YAML merge keys (<<) are not supported here; write the keys out")
				continue
			}
			if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" {
				e.add(k.Line, "a key must be a plain word, got %s", describe(k))
				continue
			}
			if first, dup := seen[k.Value]; dup {
				e.add(k.Line, "duplicate key %q (first at line %d)", k.Value, first)
			} else {
				seen[k.Value] = k.Line
			}
		}
	}
	for i := 0; i < len(n.Content); i++ {
		if n.Kind == yaml.MappingNode && i%2 == 0 && n.Content[i].ShortTag() == "!!merge" {
			i++ // the merged value was reported with its key
			continue
		}
		checkTree(e, n.Content[i])
	}
}

// describe names a node's value for an error message: "abc" quoted when
// it is a string, bare otherwise.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 60 {
			v = v[:57] + "..."
		}
		switch n.ShortTag() {
		case "!!str", "!!timestamp":
			return strconv.Quote(v)
		case "!!null":
			return "nothing"
		}
		if strings.ContainsFunc(v, func(r rune) bool { return !strconv.IsPrint(r) }) {
			return strconv.Quote(v)
		}
		return v
	}
	return "something else"
}

var (
	durationType  = reflect.TypeFor[sdk.Duration]()
	prefixType    = reflect.TypeFor[netip.Prefix]()
	rawBlockType  = reflect.TypeFor[RawBlock]()
	errNotInteger = errors.New("not an integer")
)

// decoder walks the YAML tree and the Go value side by side. It is used
// instead of yaml.Decoder.KnownFields: it reports every unknown key with
// its path and the known ones, decodes sdk.Duration and netip.Prefix, and
// records the line of every key.
type decoder struct {
	*errs
	lines map[string]int  // path of every key or list item -> line
	unset map[string]bool // paths written with no value
}

func (d *decoder) key(path string, line int, val *yaml.Node) {
	d.lines[path] = line
	if val.ShortTag() == "!!null" {
		d.unset[path] = true
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func where(path string) string {
	if path == "" {
		return "at the top level"
	}
	return "in " + path
}

// value decodes n into v; path names v in messages ("listeners[0].relay").
// A null node leaves v as it is (unset).
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if n.ShortTag() == "!!null" || n.Kind == yaml.AliasNode || !coreTags[n.ShortTag()] {
		// Aliases and odd tags were reported by checkTree.
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			if x, err := sdk.ParseDuration(n.Value); err == nil {
				v.SetInt(int64(x))
				return
			}
		}
		d.add(n.Line, "%s: expected a duration like \"30s\", \"5m\", \"1h\" or \"2d\", got %s", path, describe(n))
		return
	case t == prefixType:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			p, err := netip.ParsePrefix(n.Value)
			if err == nil {
				v.Set(reflect.ValueOf(p))
				return
			}
			if a, err := netip.ParseAddr(n.Value); err == nil {
				d.add(n.Line, "%s: %q is an address, not a network: write %s", path, n.Value, netip.PrefixFrom(a, a.BitLen()))
				return
			}
		}
		d.add(n.Line, "%s: invalid network %s: want CIDR notation like 192.0.2.0/24 or 2001:db8::/32", path, describe(n))
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.value(n, v.Elem(), path)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(n.Line, "%s: expected a list, got %s", path, describe(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.key(p, item.Line, item)
			d.value(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.add(n.Line, "%s: expected a mapping of names to settings, got %s", path, describe(n))
			return
		}
		m := reflect.MakeMapWithSize(t, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				continue // reported by checkTree
			}
			p := join(path, k.Value)
			d.key(p, k.Line, val)
			elem := reflect.New(t.Elem()).Elem()
			d.value(val, elem, p)
			m.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!str" || n.ShortTag() == "!!timestamp") {
			v.SetString(n.Value)
			return
		}
		hint := ""
		if n.Kind == yaml.ScalarNode {
			hint = fmt.Sprintf(" (put it in quotes: %q)", n.Value)
		}
		d.add(n.Line, "%s: expected a string, got %s%s", path, describe(n), hint)
	case reflect.Bool:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
			var b bool
			if n.Decode(&b) == nil {
				v.SetBool(b)
				return
			}
		}
		d.add(n.Line, "%s: expected true or false, got %s", path, describe(n))
	case reflect.Int, reflect.Int64:
		x, err := intValue(n)
		if err != nil {
			d.add(n.Line, "%s: expected an integer, got %s", path, describe(n))
			return
		}
		v.SetInt(x)
	case reflect.Float64:
		x, err := floatValue(n)
		if err != nil {
			d.add(n.Line, "%s: expected a number, got %s", path, describe(n))
			return
		}
		v.SetFloat(x)
	default:
		// Only the types of config.go reach here; a new field of another
		// kind must be taught to the decoder.
		panic("config: no decoder for " + t.String())
	}
}

// intValue returns the value of an !!int scalar that fits in an int64.
func intValue(n *yaml.Node) (int64, error) {
	var x int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&x) != nil {
		return 0, errNotInteger
	}
	return x, nil
}

// floatValue returns the value of a finite !!int or !!float scalar.
func floatValue(n *yaml.Node) (float64, error) {
	var x float64
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&x) != nil ||
		math.IsInf(x, 0) || math.IsNaN(x) {
		return 0, errors.New("not a finite number")
	}
	return x, nil
}

// structure decodes a mapping into struct v by the fields' yaml tags.
// A field named Line tagged yaml:"-" receives the mapping's line.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, "%s: expected a mapping of keys, got %s", path, describe(n))
		return
	}
	t := v.Type()
	fields := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if name := f.Tag.Get("yaml"); f.IsExported() && name != "" && name != "-" {
			fields[name] = i
		}
	}
	if f, ok := t.FieldByName("Line"); ok && f.Tag.Get("yaml") == "-" && f.Type.Kind() == reflect.Int {
		v.FieldByIndex(f.Index).SetInt(int64(n.Line))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			continue // reported by checkTree
		}
		fi, ok := fields[k.Value]
		if !ok {
			d.add(k.Line, "unknown key %q %s (known: %s)", k.Value, where(path), strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
			continue
		}
		p := join(path, k.Value)
		d.key(p, k.Line, val)
		fv := v.Field(fi)
		if fv.Type() == rawBlockType {
			if val.ShortTag() == "!!null" {
				continue
			}
			if val.Kind != yaml.MappingNode {
				d.add(val.Line, "%s: expected a mapping of the plugin's keys, got %s", p, describe(val))
				continue
			}
			fv.Set(reflect.ValueOf(RawBlock{Node: val, keyLine: k.Line}))
			continue
		}
		d.value(val, fv, p)
	}
}
