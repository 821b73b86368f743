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

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
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
		return i
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// stringEnd returns the index just past the string starting at b[i] ('"').
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// Object calls fn with each top-level member of the valid JSON object b:
// the key (unescaped) and the value's span. fn returning false stops the
// scan.
func Object(b []byte, fn func(key, value []byte) bool) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return ErrNotObject
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for i < len(b) {
		kEnd := stringEnd(b, i)
		key := b[i+1 : kEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
			// Escapes and invalid UTF-8 decode as encoding/json does.
			var s string
			if json.Unmarshal(b[i:kEnd], &s) == nil {
				key = []byte(s)
			}
		}
		i = skipSpace(b, kEnd)
		i = skipSpace(b, i+1) // ':'
		vEnd := valueEnd(b, i)
		if !fn(key, b[i:vEnd]) {
			return nil
		}
		i = skipSpace(b, vEnd)
		if i >= len(b) || b[i] == '}' {
			return nil
		}
		i = skipSpace(b, i+1) // ','
	}
	return nil
}

// Array returns the spans of the elements of the valid JSON array b.
func Array(b []byte) ([][]byte, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil, ErrNotArray
	}
	var out [][]byte
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, nil
	}
	for i < len(b) {
		end := valueEnd(b, i)
		out = append(out, b[i:end])
		i = skipSpace(b, end)
		if i >= len(b) || b[i] == ']' {
			break
		}
		i = skipSpace(b, i+1)
	}
	return out, nil
}
