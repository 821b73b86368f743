// Package rpcscan splits JSON text that is already known to be valid (see
// encoding/json.Valid) into the spans of its top-level members or elements,
// without decoding values. JSON-RPC routing needs the id, the method and
// where the params or result are, not their contents: scanning spans saves
// the allocations of a full decode, and matches member names exactly (as
// JSON-RPC requires; encoding/json would take "Method" for "method").
package rpcscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// ErrNotObject and ErrNotArray report text of the wrong kind.
var (
	ErrNotObject = errors.New("not a JSON object")
	ErrNotArray  = errors.New("not a JSON array")
)

// SkipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// ValueEnd returns the index just past the value starting at b[i], or -1
// when b ends before the value does. It does not check the value: on text
// that is not valid JSON it finds where a value would end, which is what a
// caller scanning a cut-off message needs. A scalar (a number, true, false,
// null) counts as ended only when a delimiter follows it: "12" at the end
// of cut-off text may have been "123".
func ValueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return StringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = StringEnd(b, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	start := i
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if i == start {
				return -1
			}
			return i
		}
	}
	return -1
}

// StringEnd returns the index just past the string starting at b[i] ('"'),
// or -1 when b ends first.
func StringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// Object calls fn with each top-level member of the valid JSON object b:
// the key (unescaped) and the value's span. fn returning false stops the
// scan.
func Object(b []byte, fn func(key, value []byte) bool) error {
	i := SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return ErrNotObject
	}
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for i < len(b) {
		kEnd := StringEnd(b, i)
		key := b[i+1 : kEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
			// Escapes and invalid UTF-8 decode as encoding/json does.
			var s string
			if json.Unmarshal(b[i:kEnd], &s) == nil {
				key = []byte(s)
			}
		}
		i = SkipSpace(b, kEnd)
		i = SkipSpace(b, i+1) // ':'
		vEnd := ValueEnd(b, i)
		if !fn(key, b[i:vEnd]) {
			return nil
		}
		i = SkipSpace(b, vEnd)
		if i >= len(b) || b[i] == '}' {
			return nil
		}
		i = SkipSpace(b, i+1) // ','
	}
	return nil
}

// Array returns the spans of the elements of the valid JSON array b.
func Array(b []byte) ([][]byte, error) {
	i := SkipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil, ErrNotArray
	}
	var out [][]byte
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, nil
	}
	for i < len(b) {
		end := ValueEnd(b, i)
		out = append(out, b[i:end])
		i = SkipSpace(b, end)
		if i >= len(b) || b[i] == ']' {
			break
		}
		i = SkipSpace(b, i+1)
	}
	return out, nil
}
