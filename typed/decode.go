package typed

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/wsbridge/wsbridge/internal/jsonscan"
)

// Result decodes a JSON-RPC result (for a server-streaming rpc: one
// notification's result) into a new response message. An error says where
// in the result and what did not fit; the caller fails that call alone.
func (m *Method) Result(raw json.RawMessage) (*dynamicpb.Message, error) {
	if !json.Valid(raw) {
		return nil, errors.New("result: not valid JSON")
	}
	return m.ResultOfValid(raw)
}

// ResultOfValid is Result for raw that is known to be valid JSON: the
// bridge checks each backend frame once, and its results and
// notifications are parts of such frames. Text that is not valid JSON may
// make it panic.
func (m *Method) ResultOfValid(raw json.RawMessage) (*dynamicpb.Message, error) {
	resp := m.NewResponse()
	if err := m.enc.decodeInto(resp, m.resultField, raw); err != nil {
		return nil, err
	}
	return resp, nil
}

// decodeInto decodes raw, valid JSON, into msg, or into its field fd when
// fd is not nil.
func (e *encoding) decodeInto(msg protoreflect.Message, fd protoreflect.FieldDescriptor, raw []byte) error {
	d := decoder{encoding: e, s: jsonscan.Scanner{B: raw}}
	d.s.SkipSpace()
	if fd != nil {
		return d.field(msg, fd, "result", 0)
	}
	if c := d.s.Peek(); c != '{' && c != 'n' {
		return fmt.Errorf("result: %s, where %s needs an object (or set (wsbridge.v1.jsonrpc).result_field to take it in one field)", kindOf(c), msg.Descriptor().FullName())
	}
	return d.message(msg, "result", 0)
}

type decoder struct {
	*encoding
	s jsonscan.Scanner
}

// kindOf names the JSON value starting with c, for errors.
func kindOf(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// message decodes the object (or null) at the scanner into msg.
func (d *decoder) message(msg protoreflect.Message, path string, depth int) error {
	if depth > jsonscan.MaxDepth {
		return jsonscan.ErrDepth
	}
	md := msg.Descriptor()
	if isWellKnown(md) {
		raw, err := d.s.Skip(depth)
		if err != nil {
			return err
		}
		if err := (protojson.UnmarshalOptions{Resolver: d.types, DiscardUnknown: !d.rejectUnknown}).Unmarshal(raw, msg.Interface()); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	}
	switch c := d.s.Peek(); c {
	case 'n':
		d.s.Literal()
		return nil
	case '{':
	default:
		return fmt.Errorf("%s: %s, where %s needs an object", path, kindOf(c), md.FullName())
	}
	d.s.Next()
	var seen []protoreflect.FieldNumber
	for d.s.Peek() != '}' {
		key, err := d.s.String()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		d.s.SkipSpace()
		d.s.Next() // ':'
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		switch {
		case fd == nil && d.rejectUnknown:
			return fmt.Errorf("%s: %s has no field %q", path, md.FullName(), key)
		case fd == nil:
			if _, err := d.s.Skip(depth + 1); err != nil {
				return err
			}
		case slices.Contains(seen, fd.Number()):
			return fmt.Errorf("%s: field %q given twice", path, key)
		case d.s.Peek() == 'n' && !(fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Value") &&
			!(fd.Enum() != nil && fd.Enum().FullName() == "google.protobuf.NullValue"):
			d.s.Literal() // null leaves the field unset, as in protojson
			seen = append(seen, fd.Number())
		default:
			seen = append(seen, fd.Number())
			if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
				if set := msg.WhichOneof(od); set != nil {
					return fmt.Errorf("%s: %q and %q are of one oneof", path, set.JSONName(), key)
				}
			}
			if err := d.field(msg, fd, path+"."+key, depth+1); err != nil {
				return err
			}
		}
		d.s.SkipSpace()
		if d.s.Peek() == ',' {
			d.s.Next()
		}
	}
	d.s.I++
	return nil
}

// field decodes the value at the scanner into msg's field fd.
func (d *decoder) field(msg protoreflect.Message, fd protoreflect.FieldDescriptor, path string, depth int) error {
	switch {
	case fd.IsList():
		if c := d.s.Peek(); c == 'n' {
			d.s.Literal()
			return nil
		} else if c != '[' {
			return fmt.Errorf("%s: %s, where repeated field %s needs an array", path, kindOf(c), fd.Name())
		}
		l := msg.Mutable(fd).List()
		d.s.Next()
		for i := 0; d.s.Peek() != ']'; i++ {
			v, err := d.singular(l.NewElement, fd, fmt.Sprintf("%s[%d]", path, i), depth)
			if err != nil {
				return err
			}
			l.Append(v)
			d.s.SkipSpace()
			if d.s.Peek() == ',' {
				d.s.Next()
			}
		}
		d.s.I++
		return nil
	case fd.IsMap():
		if c := d.s.Peek(); c == 'n' {
			d.s.Literal()
			return nil
		} else if c != '{' {
			return fmt.Errorf("%s: %s, where map field %s needs an object", path, kindOf(c), fd.Name())
		}
		mp := msg.Mutable(fd).Map()
		d.s.Next()
		for d.s.Peek() != '}' {
			ks, err := d.s.String()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			d.s.SkipSpace()
			d.s.Next() // ':'
			key, err := mapKey(fd.MapKey(), ks)
			if err != nil {
				return fmt.Errorf("%s: key %q: %w", path, ks, err)
			}
			if mp.Has(key) {
				return fmt.Errorf("%s: key %q given twice", path, ks)
			}
			v, err := d.singular(mp.NewValue, fd.MapValue(), path+"["+ks+"]", depth)
			if err != nil {
				return err
			}
			mp.Set(key, v)
			d.s.SkipSpace()
			if d.s.Peek() == ',' {
				d.s.Next()
			}
		}
		d.s.I++
		return nil
	}
	v, err := d.singular(func() protoreflect.Value { return msg.NewField(fd) }, fd, path, depth)
	if err != nil {
		return err
	}
	msg.Set(fd, v)
	return nil
}

func mapKey(fd protoreflect.FieldDescriptor, s string) (protoreflect.MapKey, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(s).MapKey(), nil
	case protoreflect.BoolKind:
		switch s {
		case "true":
			return protoreflect.ValueOfBool(true).MapKey(), nil
		case "false":
			return protoreflect.ValueOfBool(false).MapKey(), nil
		}
		return protoreflect.MapKey{}, errors.New("not true or false")
	}
	v, err := integer(fd, []byte(s), true)
	if err != nil {
		return protoreflect.MapKey{}, err
	}
	return v.MapKey(), nil
}

// singular decodes one value of fd's kind (an element, for lists and
// maps); newMessage makes the message a message value goes into.
func (d *decoder) singular(newMessage func() protoreflect.Value, fd protoreflect.FieldDescriptor, path string, depth int) (protoreflect.Value, error) {
	c := d.s.Peek()
	bad := func(want string) (protoreflect.Value, error) {
		return protoreflect.Value{}, fmt.Errorf("%s: %s, where %s field %s needs %s", path, kindOf(c), fd.Kind(), fd.Name(), want)
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		v := newMessage()
		if err := d.message(v.Message(), path, depth+1); err != nil {
			return protoreflect.Value{}, err
		}
		return v, nil
	case protoreflect.BoolKind:
		if c != 't' && c != 'f' {
			return bad("true or false")
		}
		return protoreflect.ValueOfBool(d.s.Literal()[0] == 't'), nil
	case protoreflect.StringKind:
		if c != '"' {
			return bad("a string")
		}
		s, err := d.s.String()
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
		}
		return protoreflect.ValueOfString(s), nil
	case protoreflect.BytesKind:
		if c != '"' {
			return bad("a 0x hex or base64 string")
		}
		s, err := d.s.String()
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
		}
		b, err := decodeBytes(s)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
		}
		return protoreflect.ValueOfBytes(b), nil
	case protoreflect.EnumKind:
		switch c {
		case 'n':
			d.s.Literal()
			return protoreflect.ValueOfEnum(0), nil
		case '"':
			s, err := d.s.String()
			if err != nil {
				return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
			}
			ev := fd.Enum().Values().ByName(protoreflect.Name(s))
			if ev == nil {
				return protoreflect.Value{}, fmt.Errorf("%s: %q is not a value of %s", path, s, fd.Enum().FullName())
			}
			return protoreflect.ValueOfEnum(ev.Number()), nil
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			v, err := integer(fd, d.s.Number(), false)
			if err != nil {
				return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
			}
			return v, nil
		}
		return bad("a value name or number")
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		var text string
		switch c {
		case '"':
			s, err := d.s.String()
			if err != nil {
				return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
			}
			text = s
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			text = string(d.s.Number())
		default:
			return bad("a number")
		}
		bits := 64
		if fd.Kind() == protoreflect.FloatKind {
			bits = 32
		}
		var f float64
		var err error
		switch text {
		case "NaN":
			f = math.NaN()
		case "Infinity":
			f = math.Inf(1)
		case "-Infinity":
			f = math.Inf(-1)
		default:
			if f, err = strconv.ParseFloat(text, bits); err != nil {
				return protoreflect.Value{}, fmt.Errorf("%s: %q is not a number in range", path, text)
			}
		}
		if bits == 32 {
			return protoreflect.ValueOfFloat32(float32(f)), nil
		}
		return protoreflect.ValueOfFloat64(f), nil
	}
	// Integers: a JSON number, a decimal string, or a 0x hex string.
	var text []byte
	quoted := false
	switch c {
	case '"':
		s, err := d.s.String()
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
		}
		text, quoted = []byte(s), true
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		text = d.s.Number()
	default:
		return bad("an integer (a number, a decimal string or a 0x hex string)")
	}
	v, err := integer(fd, text, quoted)
	if err != nil {
		return protoreflect.Value{}, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// integer parses text (a JSON number, or the contents of a string: decimal
// or 0x hex) as a value of fd's integer kind, exactly, or fails.
func integer(fd protoreflect.FieldDescriptor, text []byte, quoted bool) (protoreflect.Value, error) {
	s := string(text)
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimPrefix(s, "-")
	var mag uint64
	var err error
	switch {
	case quoted && (strings.HasPrefix(digits, "0x") || strings.HasPrefix(digits, "0X")):
		if len(digits) == 2 {
			return protoreflect.Value{}, fmt.Errorf("%q has no hex digits", s)
		}
		mag, err = strconv.ParseUint(digits[2:], 16, 64)
	default:
		mag, err = strconv.ParseUint(digits, 10, 64)
		if err != nil && !quoted && strings.ContainsAny(digits, ".eE") {
			// 1e3, 2.0: a JSON number that is an integer after all.
			f, _, perr := big.ParseFloat(digits, 10, 256, big.ToNearestEven)
			if perr == nil && f.IsInt() {
				var acc big.Accuracy
				mag, acc = f.Uint64()
				if acc == big.Exact {
					err = nil
				}
			}
		}
	}
	if err != nil {
		return protoreflect.Value{}, fmt.Errorf("%q is not an integer of %s's range", s, fd.Kind())
	}
	outOfRange := fmt.Errorf("%s is out of %s's range", s, fd.Kind())
	switch fd.Kind() {
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		if neg && mag != 0 {
			return protoreflect.Value{}, outOfRange
		}
		return protoreflect.ValueOfUint64(mag), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		if neg && mag != 0 || mag > math.MaxUint32 {
			return protoreflect.Value{}, outOfRange
		}
		return protoreflect.ValueOfUint32(uint32(mag)), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		if neg {
			if mag > 1<<63 {
				return protoreflect.Value{}, outOfRange
			}
			return protoreflect.ValueOfInt64(int64(-mag)), nil // -(1<<63) wraps to MinInt64
		}
		if mag > math.MaxInt64 {
			return protoreflect.Value{}, outOfRange
		}
		return protoreflect.ValueOfInt64(int64(mag)), nil
	case protoreflect.EnumKind:
		if neg && mag > 1<<31 || !neg && mag > math.MaxInt32 {
			return protoreflect.Value{}, outOfRange
		}
		n := int32(mag)
		if neg {
			n = int32(-int64(mag))
		}
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(n)), nil
	}
	// int32, sint32, sfixed32
	if neg && mag > 1<<31 || !neg && mag > math.MaxInt32 {
		return protoreflect.Value{}, outOfRange
	}
	if neg {
		return protoreflect.ValueOfInt32(int32(-int64(mag))), nil
	}
	return protoreflect.ValueOfInt32(int32(mag)), nil
}

// decodeBytes reads 0x hex, or base64 (standard or URL alphabet, padded
// or not).
func decodeBytes(s string) ([]byte, error) {
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		b, err := hex.DecodeString(s[2:])
		if err != nil {
			return nil, fmt.Errorf("%q is not hex: %w", s, err)
		}
		return b, nil
	}
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%q is neither 0x hex nor base64", s)
	}
	return b, nil
}
