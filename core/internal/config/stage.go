package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
)

// ValidateBlock checks a stage's config block against the schema its
// plugin reported (sdk.Schema): an object with Properties takes exactly
// those keys, one with AdditionalProperties is a map of such values, and
// one with neither takes no keys; Required keys must be present with a
// value; "integer" takes YAML integers only (not 1.5, not "5"), "number"
// integers and finite floats, "boolean" true/false, "string" strings, and
// format "duration" a string sdk.ParseDuration accepts. A key written
// with no value stands for the plugin's default. A nil schema accepts
// anything (the plugin checks on its own).
//
// The error, if any, is an ErrorList of "FILE:LINE: stage "NAME" (plugin
// P): message", LINE being that of the offending key or value, or of the
// block (or the stage) for a missing required key.
func ValidateBlock(file string, st Stage, schema *sdk.Schema) error {
	v := &blockValidator{errs: &errs{file: file}, st: st}
	n := st.Config.Node
	if n == nil {
		n = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: st.Line}
	}
	v.node(n, schema, "", st.configLine())
	return v.list.err()
}

// configLine is the line of the stage's "config:" key, or of the stage.
func (st Stage) configLine() int {
	if st.Config.keyLine > 0 {
		return st.Config.keyLine
	}
	return st.Line
}

type blockValidator struct {
	*errs
	st Stage
}

func (v *blockValidator) fail(line int, path, format string, args ...any) {
	prefix := fmt.Sprintf("stage %q (plugin %s): ", v.st.Name, v.st.Plugin)
	if path != "" {
		prefix += path + ": "
	}
	v.add(line, "%s"+format, append([]any{prefix}, args...)...)
}

// node checks n against s; path is the dotted path of n ("tls.policy",
// "allow.2"), keyLine the line of the key holding n.
func (v *blockValidator) node(n *yaml.Node, s *sdk.Schema, path string, keyLine int) {
	if s == nil || n.ShortTag() == "!!null" {
		return
	}
	tag := n.ShortTag()
	switch s.Type {
	case "object":
		if n.Kind != yaml.MappingNode {
			v.fail(n.Line, path, "expected a mapping of keys, got %s", describe(n))
			return
		}
		present := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := joinDot(path, k.Value)
			if val.ShortTag() != "!!null" {
				present[k.Value] = true
			}
			if ps, ok := s.Properties[k.Value]; ok {
				v.node(val, ps, p, k.Line)
			} else if s.AdditionalProperties != nil {
				v.node(val, s.AdditionalProperties, p, k.Line)
			} else {
				in := ""
				if path != "" {
					in = " in " + path
				}
				known := "none: the plugin takes no settings here"
				if len(s.Properties) > 0 {
					known = "known: " + strings.Join(slices.Sorted(maps.Keys(s.Properties)), ", ")
				}
				v.fail(k.Line, "", "unknown key %q%s (%s)", k.Value, in, known)
			}
		}
		for _, r := range s.Required {
			if !present[r] {
				v.fail(keyLine, path, "missing required key %q", r)
			}
		}
	case "array":
		if n.Kind != yaml.SequenceNode {
			v.fail(n.Line, path, "expected a list, got %s", describe(n))
			return
		}
		for i, item := range n.Content {
			v.node(item, s.Items, joinDot(path, strconv.Itoa(i)), item.Line)
		}
	case "string":
		isStr := n.Kind == yaml.ScalarNode && (tag == "!!str" || tag == "!!timestamp")
		if s.Format == "duration" {
			if isStr {
				if _, err := sdk.ParseDuration(n.Value); err == nil {
					return
				}
			}
			v.fail(n.Line, path, "expected a duration like \"30s\", got %s", describe(n))
			return
		}
		if !isStr {
			hint := ""
			if n.Kind == yaml.ScalarNode {
				hint = fmt.Sprintf(" (put it in quotes: %q)", n.Value)
			}
			v.fail(n.Line, path, "expected a string, got %s%s", describe(n), hint)
		}
	case "integer":
		if _, err := jsonInteger(n); err != nil {
			v.fail(n.Line, path, "expected an integer, got %s", describe(n))
		}
	case "number":
		if _, err := floatValue(n); err != nil {
			v.fail(n.Line, path, "expected a number, got %s", describe(n))
		}
	case "boolean":
		if n.Kind != yaml.ScalarNode || tag != "!!bool" {
			v.fail(n.Line, path, "expected true or false, got %s", describe(n))
		}
	}
}

func joinDot(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonInteger returns the JSON text of an !!int scalar in int64 or uint64
// range.
func jsonInteger(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		return "", errNotInteger
	}
	var i int64
	if n.Decode(&i) == nil {
		return strconv.FormatInt(i, 10), nil
	}
	var u uint64
	if n.Decode(&u) == nil {
		return strconv.FormatUint(u, 10), nil
	}
	return "", errNotInteger
}

// BlockJSON returns the stage's config block as a JSON object for the
// plugin: mappings become objects (keys in file order), lists arrays,
// integers and floats numbers (0x10 becomes 16), true/false booleans, a
// key with no value null (the plugin's default), and everything else,
// durations included, strings. An absent block is {}. It fails on what
// JSON cannot hold (an infinite or NaN float, an integer beyond 64 bits,
// an alias), naming the stage and line; Parse rejects the last already.
func BlockJSON(st Stage) ([]byte, error) {
	n := st.Config.Node
	if n == nil || n.ShortTag() == "!!null" {
		return []byte("{}"), nil
	}
	var b bytes.Buffer
	if err := writeJSON(&b, n); err != nil {
		return nil, fmt.Errorf("stage %q (plugin %s): config %w", st.Name, st.Plugin, err)
	}
	return b.Bytes(), nil
}

func writeJSON(b *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(n.Content[i].Value)
			b.Write(k)
			b.WriteByte(':')
			if err := writeJSON(b, n.Content[i+1]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case yaml.SequenceNode:
		b.WriteByte('[')
		for i, item := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeJSON(b, item); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			b.WriteString("null")
		case "!!bool":
			var x bool
			if err := n.Decode(&x); err != nil {
				return fmt.Errorf("line %d: %v", n.Line, err)
			}
			b.WriteString(strconv.FormatBool(x))
		case "!!int":
			s, err := jsonInteger(n)
			if err != nil {
				return fmt.Errorf("line %d: integer %s does not fit in 64 bits", n.Line, n.Value)
			}
			b.WriteString(s)
		case "!!float":
			x, err := floatValue(n)
			if err != nil {
				return fmt.Errorf("line %d: %s is not a finite number", n.Line, n.Value)
			}
			b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
		default:
			s, _ := json.Marshal(n.Value)
			b.Write(s)
		}
	default:
		return fmt.Errorf("line %d: YAML aliases are not supported", n.Line)
	}
	return nil
}

// MarshalJSON writes the block as BlockJSON does (null when absent), so
// that a Config marshals to readable JSON.
func (b RawBlock) MarshalJSON() ([]byte, error) {
	if b.Node == nil {
		return []byte("null"), nil
	}
	var buf bytes.Buffer
	if err := writeJSON(&buf, b.Node); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// KeyLine returns the line of the key at dottedPath inside the stage's
// config block, as an sdk.FieldError names it ("tls.policy", "allow.2":
// list items by index; a map key containing dots, such as a domain, is
// matched whole). If the path is not all there it returns the line of
// its longest present prefix, else of the "config:" key, else of the
// stage.
func (st Stage) KeyLine(dottedPath string) int {
	line := st.configLine()
	n := st.Config.Node
	parts := strings.Split(dottedPath, ".")
	if dottedPath == "" {
		parts = nil
	}
	for len(parts) > 0 && n != nil {
		var next *yaml.Node
		used := 0
		switch n.Kind {
		case yaml.MappingNode:
			// Longest match first, so that "domains.example.org" finds
			// the key "example.org".
		search:
			for j := len(parts); j > 0; j-- {
				key := strings.Join(parts[:j], ".")
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == key {
						line, next, used = n.Content[i].Line, n.Content[i+1], j
						break search
					}
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(parts[0]); err == nil && i >= 0 && i < len(n.Content) {
				next, used = n.Content[i], 1
				line = next.Line
			}
		}
		if next == nil {
			break
		}
		n, parts = next, parts[used:]
	}
	return line
}

// StageError turns an error the plugin returned from Configure into a
// "FILE:LINE: stage "NAME" (plugin P): message" *Error: at the key an
// *sdk.FieldError names (see KeyLine), else at the stage's config block.
func StageError(file string, st Stage, err error) *Error {
	msg := fmt.Sprintf("stage %q (plugin %s): ", st.Name, st.Plugin)
	var fe *sdk.FieldError
	if errors.As(err, &fe) {
		return &Error{File: file, Line: st.KeyLine(fe.Field), Msg: msg + fe.Error()}
	}
	return &Error{File: file, Line: st.configLine(), Msg: msg + err.Error()}
}
