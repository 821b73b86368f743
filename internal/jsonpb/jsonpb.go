// Package jsonpb converts between JSON text and google.protobuf.Value
// directly. protojson does the same through its generic message machinery
// and shows in the profiles of every gRPC call (params out, result back);
// these two functions do only what Value needs.
package jsonpb

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/internal/jsonenc"
	"github.com/wsbridge/wsbridge/internal/jsonscan"
)

// ToValue parses JSON text into a Value. Like protojson, it refuses
// numbers out of float64's range and strings that are not UTF-8.
func ToValue(data []byte) (*structpb.Value, error) {
	if !json.Valid(data) {
		return nil, errors.New("invalid JSON")
	}
	return ToValueOfValid(data)
}

// ToValueOfValid is ToValue for data known to be valid JSON: the bridge
// checks each backend frame once, and results are parts of such frames,
// so that checking them again would cost a second pass over every reply.
// Text that is not valid JSON may make it panic.
func ToValueOfValid(data []byte) (*structpb.Value, error) {
	p := jsonscan.Scanner{B: data}
	p.SkipSpace()
	return value(&p, 0)
}

// value parses the value at p.I.
func value(p *jsonscan.Scanner, depth int) (*structpb.Value, error) {
	if depth > jsonscan.MaxDepth {
		return nil, jsonscan.ErrDepth
	}
	switch c := p.Peek(); c {
	case '{':
		p.Next()
		fields := map[string]*structpb.Value{}
		for p.Peek() != '}' {
			k, err := p.String()
			if err != nil {
				return nil, err
			}
			p.SkipSpace()
			p.Next() // ':'
			v, err := value(p, depth+1)
			if err != nil {
				return nil, err
			}
			if _, dup := fields[k]; dup {
				// Parsers disagree on which duplicate wins; protojson
				// refuses the object, and so do we.
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			fields[k] = v
			p.SkipSpace()
			if p.Peek() == ',' {
				p.Next()
			}
		}
		p.I++
		return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
	case '[':
		p.Next()
		var vals []*structpb.Value
		for p.Peek() != ']' {
			v, err := value(p, depth+1)
			if err != nil {
				return nil, err
			}
			vals = append(vals, v)
			p.SkipSpace()
			if p.Peek() == ',' {
				p.Next()
			}
		}
		p.I++
		return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
	case '"':
		s, err := p.String()
		if err != nil {
			return nil, err
		}
		return structpb.NewStringValue(s), nil
	case 't', 'f', 'n':
		switch lit := p.Literal(); lit[0] {
		case 't':
			return structpb.NewBoolValue(true), nil
		case 'f':
			return structpb.NewBoolValue(false), nil
		}
		return structpb.NewNullValue(), nil
	default:
		num := p.Number()
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", num, err)
		}
		return structpb.NewNumberValue(f), nil
	}
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
