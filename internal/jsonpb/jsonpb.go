// Package jsonpb converts between JSON text and google.protobuf.Value
// directly. protojson does the same through its generic message machinery
// and shows in the profiles of every gRPC call (params out, result back);
// these two functions do only what Value needs.
package jsonpb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/internal/jsonenc"
)

// maxDepth matches protojson's recursion limit.
const maxDepth = 10000

var errDepth = errors.New("JSON nested too deeply")

// ToValue parses JSON text into a Value. Like protojson, it refuses
// numbers out of float64's range and strings that are not UTF-8.
func ToValue(data []byte) (*structpb.Value, error) {
	if !json.Valid(data) {
		return nil, errors.New("invalid JSON")
	}
	p := parser{b: data}
	p.skip()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	return v, nil
}

type parser struct {
	b []byte
	i int
}

func (p *parser) skip() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

// value parses the value at p.i (the text is valid JSON).
func (p *parser) value(depth int) (*structpb.Value, error) {
	if depth > maxDepth {
		return nil, errDepth
	}
	switch c := p.b[p.i]; {
	case c == '{':
		p.i++
		fields := map[string]*structpb.Value{}
		p.skip()
		if p.b[p.i] == '}' {
			p.i++
			return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
		}
		for {
			p.skip()
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.skip()
			p.i++ // ':'
			p.skip()
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, dup := fields[k]; dup {
				// Parsers disagree on which duplicate wins; protojson
				// refuses the object, and so do we.
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			fields[k] = v
			p.skip()
			if p.b[p.i] == '}' {
				p.i++
				return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
			}
			p.i++ // ','
		}
	case c == '[':
		p.i++
		var vals []*structpb.Value
		p.skip()
		if p.b[p.i] == ']' {
			p.i++
			return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
		}
		for {
			p.skip()
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			vals = append(vals, v)
			p.skip()
			if p.b[p.i] == ']' {
				p.i++
				return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
			}
			p.i++ // ','
		}
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return structpb.NewStringValue(s), nil
	case c == 't':
		p.i += 4
		return structpb.NewBoolValue(true), nil
	case c == 'f':
		p.i += 5
		return structpb.NewBoolValue(false), nil
	case c == 'n':
		p.i += 4
		return structpb.NewNullValue(), nil
	default:
		start := p.i
		for p.i < len(p.b) {
			switch p.b[p.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				goto done
			}
			p.i++
		}
	done:
		f, err := strconv.ParseFloat(string(p.b[start:p.i]), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", p.b[start:p.i], err)
		}
		return structpb.NewNumberValue(f), nil
	}
}

// str parses the string at p.i.
func (p *parser) str() (string, error) {
	start := p.i
	p.i++
	escaped := false
	for p.b[p.i] != '"' {
		if p.b[p.i] == '\\' {
			escaped = true
			p.i++
		}
		p.i++
	}
	p.i++
	raw := p.b[start:p.i]
	if !escaped {
		s := raw[1 : len(raw)-1]
		if !utf8.Valid(s) {
			return "", errors.New("string is not UTF-8")
		}
		return string(s), nil
	}
	if !utf8.Valid(raw) { // encoding/json would turn it into U+FFFD; protojson refuses it
		return "", errors.New("string is not UTF-8")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	if bytes.Contains(raw, []byte(`\ud`)) || bytes.Contains(raw, []byte(`\uD`)) {
		// encoding/json turns lone surrogates into U+FFFD; protojson
		// refuses them. Follow protojson.
		if !validSurrogates(raw) {
			return "", errors.New("string has an invalid surrogate escape")
		}
	}
	return s, nil
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

// AppendValue appends v as JSON text. A Value with no kind, or a number
// that is NaN or infinite, is an error, as in protojson.
func AppendValue(dst []byte, v *structpb.Value) ([]byte, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NullValue:
		return append(dst, "null"...), nil
	case *structpb.Value_BoolValue:
		return strconv.AppendBool(dst, k.BoolValue), nil
	case *structpb.Value_NumberValue:
		f := k.NumberValue
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("number %v cannot be JSON", f)
		}
		if f == math.Trunc(f) && math.Abs(f) < 1e21 {
			return strconv.AppendFloat(dst, f, 'f', -1, 64), nil
		}
		return strconv.AppendFloat(dst, f, 'g', -1, 64), nil
	case *structpb.Value_StringValue:
		if !utf8.ValidString(k.StringValue) {
			return nil, errors.New("string is not UTF-8")
		}
		return jsonenc.AppendString(dst, k.StringValue), nil
	case *structpb.Value_StructValue:
		dst = append(dst, '{')
		first := true
		for key, fv := range k.StructValue.GetFields() {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = jsonenc.AppendString(dst, key)
			dst = append(dst, ':')
			var err error
			if dst, err = AppendValue(dst, fv); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case *structpb.Value_ListValue:
		dst = append(dst, '[')
		for i, e := range k.ListValue.GetValues() {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = AppendValue(dst, e); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	}
	return nil, errors.New("google.protobuf.Value has no kind")
}
