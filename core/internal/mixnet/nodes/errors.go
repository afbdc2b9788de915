package nodes

import (
	"errors"
	"fmt"
)

// The kinds of rejected descriptor (see the package comment). Every
// descriptor error wraps exactly one of them: test with errors.Is.
var (
	// ErrMalformed: the descriptor does not decode, or a field has the
	// wrong size or syntax.
	ErrMalformed = errors.New("malformed")
	// ErrForged: a signature does not verify with the descriptor's
	// identity key.
	ErrForged = errors.New("forged")
	// ErrMismatched: the signed content is inconsistent (id is not the hash
	// of the identity key, a mix key signed by another identity, two keys
	// for one epoch, a mix key also published by another node).
	ErrMismatched = errors.New("mismatched")
	// ErrExpired: no mix key is valid now or later.
	ErrExpired = errors.New("expired")
	// ErrDuplicate: a name or identity appears twice in a nodes file.
	ErrDuplicate = errors.New("duplicate")
	// ErrStale: AddNode got a descriptor published before the one already
	// in the file for the same identity.
	ErrStale = errors.New("stale")
	// ErrWrongFormat: a descriptor or mix key of one Sphinx format where
	// the network uses the other (x25519, xwing): a node never mixes them.
	ErrWrongFormat = errors.New("wrong sphinx format")
)

// ErrInsecurePermissions: a key file is readable or writable by group or
// others or is not a regular file, or the key directory is open to group or
// others and owned by another user.
var ErrInsecurePermissions = errors.New("insecure permissions")

// ErrIdentityExists: CreateIdentity found an identity key already there
// (it never overwrites one).
var ErrIdentityExists = errors.New("identity key already exists")

// DescriptorError is a rejected descriptor. Error() reads
// `descriptor "NAME" (node 1a2b3c4d): KIND: DETAIL` (without the name or
// the node when they are not known); Unwrap returns Kind.
type DescriptorError struct {
	// Name as written in the descriptor (printed quoted: it is untrusted).
	Name string
	// ID is the short node id (8 hex digits), "" if not known.
	ID string
	// Kind is one of ErrMalformed, ErrForged, ErrMismatched, ErrExpired,
	// ErrDuplicate, ErrStale.
	Kind error
	// Detail says what exactly is wrong.
	Detail string
}

func (e *DescriptorError) Error() string {
	id := ""
	if e.ID != "" {
		id = " (node " + e.ID + ")"
	}
	name := ""
	if e.Name != "" {
		name = fmt.Sprintf(" %q", e.Name)
	}
	return fmt.Sprintf("descriptor%s%s: %v: %s", name, id, e.Kind, e.Detail)
}

func (e *DescriptorError) Unwrap() error { return e.Kind }

// EntryError locates a descriptor error in a nodes file:
// `PATH:LINE: nodes[INDEX]: ERR`. Unwrap returns Err.
type EntryError struct {
	Path string
	// Index counts the entries of "nodes" from 0; Line (from 1) is where
	// the entry starts.
	Index, Line int
	Err         error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s:%d: nodes[%d]: %v", e.Path, e.Line, e.Index, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// Kind names the kind of a descriptor error: "malformed", "forged",
// "mismatched", "expired", "duplicate", "stale", "ok" for nil and "error"
// for anything else.
func Kind(err error) string {
	if err == nil {
		return "ok"
	}
	for _, k := range []error{ErrMalformed, ErrForged, ErrMismatched, ErrExpired, ErrDuplicate, ErrStale} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return "error"
}
