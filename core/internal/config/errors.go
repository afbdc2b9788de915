package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a pipeline file, or in a file it names, at a
// 1-based line. Its message reads "FILE:LINE: message".
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// ErrorList is every problem found in one pass over a file, in line order.
// Its message holds one "FILE:LINE: message" per line.
type ErrorList []*Error

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find the first *Error.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// err returns nil for an empty list, else the list sorted by line within
// each file (files in order of first appearance) with repeats removed.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	rank := map[string]int{}
	for _, e := range l {
		if _, ok := rank[e.File]; !ok {
			rank[e.File] = len(rank)
		}
	}
	slices.SortStableFunc(l, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(rank[a.File], rank[b.File]), cmp.Compare(a.Line, b.Line))
	})
	l = slices.CompactFunc(l, func(a, b *Error) bool { return *a == *b })
	return l
}

// errs collects errors about one file.
type errs struct {
	file string
	list ErrorList
}

func (e *errs) add(line int, format string, args ...any) {
	if line < 1 {
		line = 1
	}
	e.list = append(e.list, &Error{File: e.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}
