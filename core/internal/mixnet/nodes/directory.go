package nodes

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// NodesFile is the JSON document of a nodes file: {"sphinx_format":
// "xwing", "nodes": [descriptor, ...]}, sphinx_format absent for the
// X25519 format. Every descriptor must be of the file's format.
type NodesFile struct {
	SphinxFormat string        `json:"sphinx_format,omitempty"`
	Nodes        []*Descriptor `json:"nodes"`
}

// Entry is the verdict on one descriptor of a nodes file.
type Entry struct {
	// Index counts the entries of "nodes" from 0; Line (from 1) is where
	// the entry starts in the file.
	Index, Line int
	// Descriptor is nil if the entry did not decode.
	Descriptor *Descriptor
	// Node is set when Err is nil or wraps ErrExpired.
	Node *Node
	// Err is nil or an *EntryError wrapping a *DescriptorError.
	Err error
}

// Fatal reports whether the entry makes LoadNodes refuse the file: any
// error but ErrExpired.
func (e *Entry) Fatal() bool { return e.Err != nil && !errors.Is(e.Err, ErrExpired) }

// CheckNodes reads and verifies every descriptor of the nodes file at path
// at time now, as LoadNodes does, and returns one Entry per descriptor
// (for `mixmta nodes verify`). Besides Verify's checks, a descriptor whose
// identity or name appeared earlier in the file is ErrDuplicate, and one
// sharing a mix public key with an earlier one ErrMismatched. The error is
// for a file that cannot be read or is not {"nodes": [...]} (with the
// line). A descriptor of another Sphinx format than the file's
// sphinx_format is ErrWrongFormat.
func CheckNodes(path string, now time.Time) ([]Entry, error) {
	entries, _, err := checkNodesFile(path, now)
	return entries, err
}

func checkNodesFile(path string, now time.Time) ([]Entry, mixkey.Kind, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("nodes: %w", err)
	}
	return checkNodesData(path, data, now)
}

// CheckNodesData is CheckNodes on the file's content; path names it in
// errors.
func CheckNodesData(path string, data []byte, now time.Time) ([]Entry, error) {
	entries, _, err := checkNodesData(path, data, now)
	return entries, err
}

// checkNodesData is CheckNodesData, returning the file's format too.
func checkNodesData(path string, data []byte, now time.Time) ([]Entry, mixkey.Kind, error) {
	raws, format, err := splitNodes(path, data)
	if err != nil {
		return nil, 0, err
	}
	entries := make([]Entry, len(raws))
	for i, r := range raws {
		entries[i] = Entry{Index: i, Line: r.line}
		entries[i].Descriptor, entries[i].Err = ParseDescriptor(r.raw)
	}
	checkEntries(path, format, entries, now)
	return entries, format, nil
}

// checkEntries verifies each entry's Descriptor (those without a parse
// error) and its format against the file's, then checks duplicates and
// shared mix keys against earlier entries; it sets Node and Err (wrapped
// in an *EntryError).
func checkEntries(path string, fileFormat mixkey.Kind, entries []Entry, now time.Time) {
	byID := map[sdk.NodeID]int{}
	byName := map[string]int{}
	byKey := map[string]int{}
	for i := range entries {
		e := &entries[i]
		if e.Err == nil {
			e.Node, e.Err = VerifyNode(e.Descriptor, now)
		}
		if e.Node != nil {
			n := e.Node
			dup := func(kind error, format string, args ...any) {
				e.Err = &DescriptorError{Name: n.Name, ID: n.ID.Short(), Kind: kind, Detail: fmt.Sprintf(format, args...)}
			}
			if n.Format != fileFormat {
				dup(ErrWrongFormat, "a descriptor of sphinx format %s in a nodes file of format %s (a network uses one format)", n.Format, fileFormat)
			} else if j, ok := byID[n.ID]; ok {
				dup(ErrDuplicate, "same identity as nodes[%d]%s", j, lineOf(entries[j]))
			} else if j, ok := byName[n.Name]; ok {
				dup(ErrDuplicate, "name also used by nodes[%d]%s (node %s)", j, lineOf(entries[j]), entries[j].Node.ID.Short())
			} else {
				for _, k := range n.Keys {
					if j, ok := byKey[string(k.Public)]; ok {
						dup(ErrMismatched, "mix key of epoch %d is also published by nodes[%d]%s %q", k.Epoch, j, lineOf(entries[j]), entries[j].Node.Name)
						break
					}
				}
			}
			if e.Fatal() {
				e.Node = nil
			} else {
				byID[n.ID], byName[n.Name] = i, i
				for _, k := range n.Keys {
					byKey[string(k.Public)] = i
				}
			}
		}
		if e.Err != nil {
			e.Err = &EntryError{Path: path, Index: e.Index, Line: e.Line, Err: e.Err}
		}
	}
}

func lineOf(e Entry) string {
	if e.Line == 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", e.Line)
}

type rawEntry struct {
	raw  json.RawMessage
	line int
}

// splitNodes cuts {"sphinx_format": F, "nodes": [...]} into its entries,
// each with its line, and returns the format (X25519 without
// sphinx_format). Unknown keys, an unknown format, a missing "nodes", and
// anything after the object are errors.
func splitNodes(path string, data []byte) ([]rawEntry, mixkey.Kind, error) {
	var kind mixkey.Kind
	out, err := splitNodesFormat(path, data, &kind)
	return out, kind, err
}

func splitNodesFormat(path string, data []byte, kind *mixkey.Kind) ([]rawEntry, error) {
	fail := func(off int64, format string, args ...any) ([]rawEntry, error) {
		return nil, fmt.Errorf("nodes: %s:%d: %s", path, lineAt(data, off), fmt.Sprintf(format, args...))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	syntax := func(err error) ([]rawEntry, error) {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fail(se.Offset, "%v", err)
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return fail(int64(len(data)), "unexpected end of file")
		}
		return fail(dec.InputOffset(), "%v", err)
	}
	expect := func(want json.Delim) error {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); !ok || d != want {
			return fmt.Errorf("want %q, got %v", want, t)
		}
		return nil
	}
	if err := expect('{'); err != nil {
		return syntax(fmt.Errorf(`want {"nodes": [...]}: %w`, err))
	}
	var out []rawEntry
	seen, seenFormat := false, false
	for dec.More() {
		off := skipSeparators(data, dec.InputOffset())
		t, err := dec.Token()
		if err != nil {
			return syntax(err)
		}
		if t == "sphinx_format" {
			var name string
			if err := dec.Decode(&name); err != nil {
				return fail(off, "sphinx_format: want a string: %v", err)
			}
			if seenFormat {
				return fail(off, `"sphinx_format" given twice`)
			}
			seenFormat = true
			if *kind, err = mixkey.ParseKind(name); err != nil {
				return fail(off, "sphinx_format %q: want x25519 or xwing", name)
			}
			continue
		}
		if t != "nodes" {
			return fail(off, "unknown key %q (want only \"sphinx_format\" and \"nodes\")", t)
		}
		if seen {
			return fail(off, `"nodes" given twice`)
		}
		seen = true
		if err := expect('['); err != nil {
			return syntax(fmt.Errorf(`"nodes": %w`, err))
		}
		for dec.More() {
			start := skipSeparators(data, dec.InputOffset())
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return syntax(err)
			}
			out = append(out, rawEntry{raw: raw, line: lineAt(data, start)})
		}
		if err := expect(']'); err != nil {
			return syntax(err)
		}
	}
	if err := expect('}'); err != nil {
		return syntax(err)
	}
	if !seen {
		return fail(0, `no "nodes" array`)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(dec.InputOffset(), "data after the closing }")
	}
	return out, nil
}

func skipSeparators(data []byte, off int64) int64 {
	for off < int64(len(data)) && bytes.IndexByte([]byte(" \t\r\n,"), data[off]) >= 0 {
		off++
	}
	return off
}

// lineAt is the 1-based line of byte offset off.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return 1 + bytes.Count(data[:off], []byte{'\n'})
}

// Directory is the verified content of a nodes file. It is read-only and
// safe for concurrent use.
type Directory struct {
	// Format is the nodes file's Sphinx format (sphinx_format).
	Format mixkey.Kind
	nodes  []*Node
	byID   map[sdk.NodeID]*Node
	// Skipped are the expired entries LoadNodes left out (each an
	// *EntryError wrapping ErrExpired), for the caller to log.
	Skipped []error
}

// LoadNodes reads the nodes file at path and verifies it at time now (see
// CheckNodes). If any descriptor is malformed, forged, mismatched or a
// duplicate, the whole file is refused: the error lists every bad entry,
// each as "PATH:LINE: nodes[I]: descriptor "NAME" (node ID): KIND: DETAIL",
// and errors.Is finds the kinds. Expired descriptors are left out and
// listed in Directory.Skipped.
func LoadNodes(path string, now time.Time) (*Directory, error) {
	entries, format, err := checkNodesFile(path, now)
	if err != nil {
		return nil, err
	}
	var bad []error
	d := &Directory{Format: format, byID: map[sdk.NodeID]*Node{}}
	for _, e := range entries {
		switch {
		case e.Fatal():
			bad = append(bad, e.Err)
		case e.Err != nil:
			d.Skipped = append(d.Skipped, e.Err)
		default:
			d.nodes = append(d.nodes, e.Node)
			d.byID[e.Node.ID] = e.Node
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("nodes: %s refused, %d of %d descriptors are bad:\n%w", path, len(bad), len(entries), errors.Join(bad...))
	}
	return d, nil
}

// NewDirectory makes a Directory of verified nodes (for example from
// VerifyNode), refusing two nodes with one id or one name (ErrDuplicate)
// and nodes of two Sphinx formats (ErrWrongFormat); its Format is theirs.
func NewDirectory(nodes ...*Node) (*Directory, error) { return newDirectory(true, nodes) }

// NewConsensusDirectory is NewDirectory for the nodes of a consensus:
// there ids are unique but names need not be, since the authorities cannot
// tell which of two nodes owns a name, and keeping one would let any node
// push another out of the network by taking its name.
func NewConsensusDirectory(nodes ...*Node) (*Directory, error) { return newDirectory(false, nodes) }

func newDirectory(uniqueNames bool, nodes []*Node) (*Directory, error) {
	d := &Directory{byID: map[sdk.NodeID]*Node{}}
	if len(nodes) > 0 {
		d.Format = nodes[0].Format
	}
	names := map[string]bool{}
	for _, n := range nodes {
		if n.Format != d.Format {
			return nil, &DescriptorError{Name: n.Name, ID: n.ID.Short(), Kind: ErrWrongFormat, Detail: fmt.Sprintf("sphinx format %s among nodes of format %s", n.Format, d.Format)}
		}
		if d.byID[n.ID] != nil || uniqueNames && names[n.Name] {
			return nil, &DescriptorError{Name: n.Name, ID: n.ID.Short(), Kind: ErrDuplicate, Detail: "id or name given twice"}
		}
		d.byID[n.ID], names[n.Name] = n, true
		d.nodes = append(d.nodes, n)
	}
	return d, nil
}

// Len is the number of nodes.
func (d *Directory) Len() int { return len(d.nodes) }

// All returns the nodes in file order (do not modify them).
func (d *Directory) All() []*Node { return append([]*Node(nil), d.nodes...) }

// Nodes returns the nodes that have a mix key valid at now or later, in
// file order, each with those keys only, as the mixer's directory
// (sdk.MixState.Nodes). Healthy is false: the core sets it.
func (d *Directory) Nodes(now time.Time) []sdk.DirectoryNode {
	var out []sdk.DirectoryNode
	for _, n := range d.nodes {
		keys := n.KeysAt(now)
		if len(keys) == 0 {
			continue
		}
		out = append(out, sdk.DirectoryNode{ID: n.ID, Name: n.Name, Exit: n.Exit, Keys: keys, Capabilities: slices.Clone(n.Capabilities)})
	}
	return out
}

// Lookup returns the node with id.
func (d *Directory) Lookup(id sdk.NodeID) (*Node, bool) {
	n, ok := d.byID[id]
	return n, ok
}

// MixAddress returns the mix address (host:port) of node id.
func (d *Directory) MixAddress(id sdk.NodeID) (string, bool) {
	if n, ok := d.byID[id]; ok {
		return n.MixAddress, true
	}
	return "", false
}

// IdentityKey returns the 32-byte Ed25519 identity key of node id, the key
// its TLS certificate must carry.
func (d *Directory) IdentityKey(id sdk.NodeID) (ed25519.PublicKey, bool) {
	if n, ok := d.byID[id]; ok {
		return n.Identity, true
	}
	return nil, false
}

// AddResult says what AddNodes did with one descriptor.
type AddResult struct {
	Name     string
	ID       sdk.NodeID
	Replaced bool
}

// AddNode is AddNodes with one descriptor.
func AddNode(path string, d *Descriptor, now time.Time) (AddResult, error) {
	r, err := AddNodes(path, []*Descriptor{d}, now)
	if err != nil {
		return AddResult{}, err
	}
	return r[0], nil
}

// AddNodes verifies descs at now and adds them to the nodes file at path,
// all or none: a descriptor with the identity of one in the file replaces
// it (in place), others are appended; the file is created if missing
// (mode 0644) and otherwise keeps its mode. Refused: a descriptor that
// fails Verify (expired ones too), one published before the one it would
// replace (ErrStale), a name already used by another identity
// (ErrDuplicate) or a mix key shared with another node (ErrMismatched),
// and a file that already holds a bad (non-expired) entry. The file is
// replaced atomically (temporary file, fsync, rename, fsync of the
// directory) under an flock(2) on .NAME.lock beside it, so concurrent
// AddNodes do not lose each other's entries.
func AddNodes(path string, descs []*Descriptor, now time.Time) ([]AddResult, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	unlock, err := lockFile(filepath.Join(dir, "."+base+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	perm := os.FileMode(0o644)
	var entries []Entry
	// A new file takes the format of the first descriptor added.
	var format mixkey.Kind
	if len(descs) > 0 && descs[0] != nil && descs[0].SphinxFormat == mixkey.XWing.String() {
		format = mixkey.XWing
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("nodes: %w", err)
	default:
		if fi, err := os.Stat(path); err == nil {
			perm = fi.Mode().Perm()
		}
		if entries, format, err = checkNodesData(path, data, now); err != nil {
			return nil, err
		}
		var bad []error
		for _, e := range entries {
			if e.Fatal() {
				bad = append(bad, e.Err)
			}
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("nodes: %s has bad descriptors, fix or remove them first (mixmta nodes verify):\n%w", path, errors.Join(bad...))
		}
	}
	results := make([]AddResult, len(descs))
	isNew := make([]bool, len(entries), len(entries)+len(descs))
	for i, d := range descs {
		n, err := VerifyNode(d, now)
		if err != nil {
			return nil, err
		}
		results[i] = AddResult{Name: n.Name, ID: n.ID}
		for j := range entries {
			old := entries[j].Node
			if old == nil || old.ID != n.ID {
				continue
			}
			if d.Published.Before(old.Published) {
				return nil, &DescriptorError{Name: n.Name, ID: n.ID.Short(), Kind: ErrStale,
					Detail: fmt.Sprintf("published %s, before the one in %s (published %s)",
						d.Published.UTC().Format(time.RFC3339), path, old.Published.Format(time.RFC3339))}
			}
			entries[j] = Entry{Index: j, Line: entries[j].Line, Descriptor: d, Node: n}
			isNew[j], results[i].Replaced = true, true
			break
		}
		if !results[i].Replaced {
			entries = append(entries, Entry{Index: len(entries), Descriptor: d, Node: n})
			isNew = append(isNew, true)
		}
	}
	for i := range entries {
		entries[i].Node, entries[i].Err = nil, nil
	}
	checkEntries(path, format, entries, now)
	for i, e := range entries {
		if e.Fatal() {
			if isNew[i] {
				return nil, e.Err.(*EntryError).Err
			}
			return nil, e.Err
		}
	}
	file := NodesFile{Nodes: make([]*Descriptor, len(entries))}
	if format == mixkey.XWing {
		file.SphinxFormat = format.String()
	}
	for i, e := range entries {
		file.Nodes[i] = e.Descriptor
	}
	out, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	if err := writeReplace(path, append(out, '\n'), perm); err != nil {
		return nil, err
	}
	return results, nil
}

// ReadDescriptors decodes the descriptors in data: either one descriptor
// (what `mixmta node export` prints) or a nodes file {"nodes": [...]}. It
// does not verify them. name names the input in errors.
func ReadDescriptors(name string, data []byte) ([]*Descriptor, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("nodes: %s: %w", name, err)
	}
	if _, ok := probe["nodes"]; !ok {
		d, err := ParseDescriptor(data)
		if err != nil {
			return nil, fmt.Errorf("nodes: %s: %w", name, err)
		}
		return []*Descriptor{d}, nil
	}
	raws, _, err := splitNodes(name, data)
	if err != nil {
		return nil, err
	}
	out := make([]*Descriptor, len(raws))
	for i, r := range raws {
		if out[i], err = ParseDescriptor(r.raw); err != nil {
			return nil, &EntryError{Path: name, Index: i, Line: r.line, Err: err}
		}
	}
	return out, nil
}
