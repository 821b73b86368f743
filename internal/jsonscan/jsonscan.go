// Package jsonscan walks JSON text that has already been checked with
// json.Valid, without building a tree: the parsers that turn JSON straight
// into protobuf values (internal/jsonpb for google.protobuf.Value, typed
// for a user's messages) share it, so that they agree on strings, numbers
// and what is refused.
package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// MaxDepth matches protojson's recursion limit.
const MaxDepth = 10000

// ErrDepth is the error for JSON nested deeper than MaxDepth.
var ErrDepth = errors.New("JSON nested too deeply")

// Scanner reads valid JSON text (json.Valid(B) holds) from position I.
type Scanner struct {
	B []byte
	I int
}

// SkipSpace moves past white space.
func (s *Scanner) SkipSpace() {
	for s.I < len(s.B) && (s.B[s.I] == ' ' || s.B[s.I] == '\t' || s.B[s.I] == '\n' || s.B[s.I] == '\r') {
		s.I++
	}
}

// Peek returns the byte at I (after SkipSpace: the first byte of the next
// token).
func (s *Scanner) Peek() byte { return s.B[s.I] }

// Next moves past one byte (a ':' or ',' or bracket) and the white space
// after it.
func (s *Scanner) Next() {
	s.I++
	s.SkipSpace()
}

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
	for s.I < len(s.B) {
		switch s.B[s.I] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return s.B[start:s.I]
		}
		s.I++
	}
	return s.B[start:s.I]
}

// String moves past the string at I and returns its value. Like protojson,
// it refuses invalid UTF-8 and lone surrogate escapes (encoding/json would
// turn both into U+FFFD).
func (s *Scanner) String() (string, error) {
	raw := s.rawString()
	if bytes.IndexByte(raw, '\\') < 0 {
		v := raw[1 : len(raw)-1]
		if !utf8.Valid(v) {
			return "", errors.New("string is not UTF-8")
		}
		return string(v), nil
	}
	if !utf8.Valid(raw) {
		return "", errors.New("string is not UTF-8")
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

// rawString moves past the string at I and returns it with its quotes.
func (s *Scanner) rawString() []byte {
	start := s.I
	s.I++
	for s.B[s.I] != '"' {
		if s.B[s.I] == '\\' {
			s.I++
		}
		s.I++
	}
	s.I++
	return s.B[start:s.I]
}

// Skip moves past the value at I, whatever it is, and returns its text.
func (s *Scanner) Skip(depth int) ([]byte, error) {
	if depth > MaxDepth {
		return nil, ErrDepth
	}
	start := s.I
	switch s.B[s.I] {
	case '{', '[':
		closing := byte('}')
		if s.B[s.I] == '[' {
			closing = ']'
		}
		s.Next()
		for s.Peek() != closing {
			if closing == '}' {
				s.rawString()
				s.SkipSpace()
				s.Next() // ':'
			}
			if _, err := s.Skip(depth + 1); err != nil {
				return nil, err
			}
			s.SkipSpace()
			if s.Peek() == ',' {
				s.Next()
			}
		}
		s.I++
	case '"':
		s.rawString()
	case 't', 'f', 'n':
		s.Literal()
	default:
		s.Number()
	}
	return s.B[start:s.I], nil
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
