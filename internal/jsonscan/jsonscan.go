// Package jsonscan is wsbridge's one JSON scanner: it finds where values,
// strings and object members are in JSON text without building a tree.
// Package jsonrpc reads messages with it (routing needs the id, the method
// and where the params or result are, not their contents); internal/jsonpb
// and typed parse values with its Scanner, so that they agree on strings,
// numbers and what is refused.
//
// It offers two ways in:
//   - The span functions (SkipSpace, StringEnd, ValueEnd, Object, Array)
//     take any bytes and never panic. They follow the structure of the
//     text, not its contents: on text that encoding/json.Valid accepts they
//     find exactly the values encoding/json finds; on other text they find
//     where values would be, and say -1 where the text ends or stops being
//     JSON first. Reading a message that was cut off needs exactly that.
//   - Scanner is a cursor for parsers that decode every value. It reads
//     only text that json.Valid accepts, and may panic on other text.
//
// Member names match exactly, as JSON-RPC requires (encoding/json would
// take "Method" for "method"); escapes in names are decoded.
package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"unicode/utf8"
)

// SkipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
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

// ValueEnd returns the index just past the value starting at b[i], or -1
// when b ends before the value does. A number, true, false or null counts
// as ended only when a delimiter follows it: "12" at the end of cut-off
// text may have been "123".
func ValueEnd(b []byte, i int) int {
	end, _ := valueEnd(b, i, math.MinInt32)
	return end
}

// valueEnd is ValueEnd that also fails with ErrDepth when a value inside
// is nested deeper than MaxDepth, the value at b[i] being at depth.
func valueEnd(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return -1, nil
	}
	switch b[i] {
	case '"':
		return StringEnd(b, i), nil
	case '{', '[':
		open := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = StringEnd(b, i); i < 0 {
					return -1, nil
				}
				continue
			case '{', '[':
				if depth+open >= MaxDepth {
					// Its members would be deeper than MaxDepth.
					if j := SkipSpace(b, i+1); j < len(b) && b[j] != '}' && b[j] != ']' {
						return -1, ErrDepth
					}
				}
				open++
			case '}', ']':
				if open--; open == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return -1, nil
	}
	end := scalarEnd(b, i)
	if end == i || end == len(b) {
		return -1, nil
	}
	return end, nil
}

// scalarEnd returns the index of the first delimiter at or after i, or
// len(b).
func scalarEnd(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// Object calls fn with each member of the object starting at b[i] ('{'),
// in order: the name (decoded; see Unquote) and the value's span. It
// returns the index just past the object, or -1 when the text ends or
// stops being JSON before the object does; fn has then seen the members
// before that point. A name given twice is passed twice.
func Object(b []byte, i int, fn func(name, value []byte)) int {
	if i >= len(b) || b[i] != '{' {
		return -1
	}
	return each(b, i, '}', func(i int) int {
		if i >= len(b) || b[i] != '"' {
			return -1
		}
		nEnd := StringEnd(b, i)
		if nEnd < 0 {
			return -1
		}
		name, ok := unquote(b[i:nEnd])
		if !ok {
			return -1
		}
		i = SkipSpace(b, nEnd)
		if i >= len(b) || b[i] != ':' {
			return -1
		}
		i = SkipSpace(b, i+1)
		vEnd := ValueEnd(b, i)
		if vEnd >= 0 {
			fn(name, b[i:vEnd])
		}
		return vEnd
	})
}

// Array calls fn with the span of each element of the array starting at
// b[i] ('['), in order. It returns the index just past the array, or -1
// as Object does.
func Array(b []byte, i int, fn func(elem []byte)) int {
	if i >= len(b) || b[i] != '[' {
		return -1
	}
	return each(b, i, ']', func(i int) int {
		end := ValueEnd(b, i)
		if end >= 0 {
			fn(b[i:end])
		}
		return end
	})
}

// each reads the members of the object or array whose opening bracket is
// at b[i], and closing is the closing one: read reads the member starting
// at its argument and returns the index just past it, or -1. each returns
// the index just past the closing bracket, or -1.
func each(b []byte, i int, closing byte, read func(i int) int) int {
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1
	}
	for {
		if i = read(i); i < 0 {
			return -1
		}
		i = SkipSpace(b, i)
		if i < len(b) && b[i] == closing {
			return i + 1
		}
		if i >= len(b) || b[i] != ',' {
			return -1
		}
		i = SkipSpace(b, i+1)
	}
}

// Unquote decodes the string v (a span from StringEnd or ValueEnd). Its
// escapes are decoded as encoding/json does; a string without escapes
// comes back as it is, unchecked: callers read text that was checked to be
// UTF-8 (encoding/json would turn each byte that is not into U+FFFD). ok
// is false when v is not a string or holds an escape encoding/json
// refuses.
func Unquote(v []byte) (s string, ok bool) {
	u, ok := unquote(v)
	return string(u), ok
}

// unquote is Unquote without the copy when v has no escapes.
func unquote(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 {
		return inner, true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

// MaxDepth matches protojson's recursion limit.
const MaxDepth = 10000

// ErrDepth is the error for JSON nested deeper than MaxDepth.
var ErrDepth = errors.New("JSON nested too deeply")

// Scanner reads text that json.Valid accepts from position I, one value
// at a time; on other text it may panic.
type Scanner struct {
	B []byte
	I int
}

// SkipSpace moves past white space.
func (s *Scanner) SkipSpace() { s.I = SkipSpace(s.B, s.I) }

// Peek returns the byte at I (after SkipSpace: the first byte of the next
// token).
func (s *Scanner) Peek() byte { return s.B[s.I] }

// Next moves past one byte (a ':' or ',' or bracket) and the white space
// after it.
func (s *Scanner) Next() { s.I = SkipSpace(s.B, s.I+1) }

// Literal moves past true, false or null at I and returns it.
func (s *Scanner) Literal() []byte {
	n := 4
	if s.B[s.I] == 'f' {
		n = 5
	}
	lit := s.B[s.I : s.I+n]
	s.I += n
	return lit
}

// Number moves past the number at I and returns its text.
func (s *Scanner) Number() []byte {
	start := s.I
	s.I = scalarEnd(s.B, s.I)
	return s.B[start:s.I]
}

// String moves past the string at I and returns its value. Like protojson,
// and unlike Unquote, it refuses invalid UTF-8 and lone surrogate escapes
// (encoding/json would turn both into U+FFFD).
func (s *Scanner) String() (string, error) {
	start := s.I
	s.I = StringEnd(s.B, s.I)
	raw := s.B[start:s.I]
	if !utf8.Valid(raw) {
		return "", errors.New("string is not UTF-8")
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	if (bytes.Contains(raw, []byte(`\ud`)) || bytes.Contains(raw, []byte(`\uD`))) && !validSurrogates(raw) {
		return "", errors.New("string has an invalid surrogate escape")
	}
	return v, nil
}

// Skip moves past the value at I, whatever it is, and returns its text;
// the value is at depth (nested in depth values), and ErrDepth is the
// error when a value inside is deeper than MaxDepth.
func (s *Scanner) Skip(depth int) ([]byte, error) {
	if depth > MaxDepth {
		return nil, ErrDepth
	}
	end, err := valueEnd(s.B, s.I, depth)
	if err != nil {
		return nil, err
	}
	if end < 0 { // in valid text: a number, true, false or null at its end
		end = len(s.B)
	}
	start := s.I
	s.I = end
	return s.B[start:end], nil
}

// validSurrogates reports whether every \uD800-\uDFFF escape in a JSON
// string literal is part of a high-low pair.
func validSurrogates(raw []byte) bool {
	for i := 0; i+6 <= len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if raw[i+1] != 'u' {
			i++
			continue
		}
		r, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
		if err != nil {
			return false
		}
		switch {
		case r >= 0xD800 && r < 0xDC00:
			if i+12 > len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
				return false
			}
			lo, err := strconv.ParseUint(string(raw[i+8:i+12]), 16, 16)
			if err != nil || lo < 0xDC00 || lo > 0xDFFF {
				return false
			}
			i += 11
		case r >= 0xDC00 && r <= 0xDFFF:
			return false
		default:
			i += 5
		}
	}
	return true
}
