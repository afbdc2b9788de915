package config

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Patch returns the YAML document data with values set at dotted paths,
// keeping comments and order: a path segment is a mapping key (created if
// missing), a list index, or, inside a list of stages, a stage's name
// ("pipeline.deliver.config.relay_host"). Used by `mixmta mixnet init` to
// turn a profile into one config per node.
func Patch(data []byte, set map[string]any) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("empty document")
	}
	for path, v := range set {
		if err := setPath(doc.Content[0], strings.Split(path, "."), v); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return yaml.Marshal(&doc)
}

func setPath(n *yaml.Node, path []string, v any) error {
	if len(path) == 0 {
		var val yaml.Node
		if err := val.Encode(v); err != nil {
			return err
		}
		*n = val
		return nil
	}
	seg := path[0]
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == seg {
				return setPath(n.Content[i+1], path[1:], v)
			}
		}
		k := &yaml.Node{Kind: yaml.ScalarNode, Value: seg}
		val := &yaml.Node{Kind: yaml.MappingNode}
		n.Content = append(n.Content, k, val)
		return setPath(val, path[1:], v)
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(seg); err == nil && i >= 0 && i < len(n.Content) {
			return setPath(n.Content[i], path[1:], v)
		}
		for _, c := range n.Content {
			for j := 0; j+1 < len(c.Content); j += 2 {
				if c.Content[j].Value == "name" && c.Content[j+1].Value == seg {
					return setPath(c, path[1:], v)
				}
			}
		}
		return fmt.Errorf("no element %q", seg)
	case yaml.ScalarNode:
		if n.Tag == "!!null" || n.Value == "" {
			*n = yaml.Node{Kind: yaml.MappingNode}
			return setPath(n, path, v)
		}
	}
	return fmt.Errorf("cannot descend into %q", seg)
}
