package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
)

// Show renders the effective config as YAML, defaults filled in, keys in
// the order of docs/configuration.md (`mixmta config show`, like
// postconf). With onlySet, only the keys written in the file appear (like
// postconf -n). Stage config blocks appear as written: their defaults
// belong to the plugins (`mixmta plugins` lists them).
func (c *Config) Show(onlySet bool) ([]byte, error) {
	n := c.showValue(reflect.ValueOf(c).Elem(), "", onlySet)
	if n == nil {
		n = &yaml.Node{Kind: yaml.MappingNode}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

func scalar(tag, v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: v} }

// showValue returns the node of v at path, or nil to leave it out.
func (c *Config) showValue(v reflect.Value, path string, onlySet bool) *yaml.Node {
	switch v.Type() {
	case durationType:
		return scalar("!!str", fmtDur(v.Interface().(sdk.Duration)))
	case prefixType:
		return scalar("!!str", v.Interface().(netip.Prefix).String())
	case rawBlockType:
		if b := v.Interface().(RawBlock); b.Node != nil {
			return b.Node
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return c.showValue(v.Elem(), path, onlySet)
	case reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			tag := f.Tag.Get("yaml")
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			p := join(path, tag)
			if onlySet && !c.written(p) {
				continue
			}
			if child := c.showValue(v.Field(i), p, onlySet); child != nil {
				m.Content = append(m.Content, scalar("!!str", tag), child)
			}
		}
		if len(m.Content) == 0 && path != "" {
			return nil
		}
		return m
	case reflect.Slice:
		if v.Len() == 0 {
			return nil
		}
		s := &yaml.Node{Kind: yaml.SequenceNode}
		for i := range v.Len() {
			if child := c.showValue(v.Index(i), fmt.Sprintf("%s[%d]", path, i), onlySet); child != nil {
				s.Content = append(s.Content, child)
			}
		}
		return s
	case reflect.Map:
		if v.Len() == 0 {
			return nil
		}
		m := &yaml.Node{Kind: yaml.MappingNode}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			if child := c.showValue(v.MapIndex(k), join(path, k.String()), onlySet); child != nil {
				m.Content = append(m.Content, scalar("!!str", k.String()), child)
			}
		}
		return m
	case reflect.String:
		return scalar("!!str", v.String())
	case reflect.Bool:
		return scalar("", strconv.FormatBool(v.Bool()))
	case reflect.Int, reflect.Int64, reflect.Int32:
		return scalar("", strconv.FormatInt(v.Int(), 10))
	case reflect.Float64:
		return scalar("", strconv.FormatFloat(v.Float(), 'g', -1, 64))
	}
	return scalar("!!str", fmt.Sprint(v.Interface()))
}

// written reports whether the key at path, or a key under it, was written
// in the file with a value.
func (c *Config) written(path string) bool {
	for p := range c.lines {
		if (p == path && !c.unset[p]) || strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			return true
		}
	}
	return false
}
