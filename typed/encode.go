package typed

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonenc"
	"github.com/wsbridge/wsbridge/internal/jsonscan"
)

// Params returns the JSON-RPC params for req: an object (NAMED), an array
// (POSITIONAL, or NONE with a params prefix), or nil for no params member.
func (m *Method) Params(req protoreflect.Message) (json.RawMessage, error) {
	switch m.shape {
	case wsbridgev1.ParamsShape_PARAMS_SHAPE_NAMED:
		return m.enc.appendMessage(nil, req, 0)
	case wsbridgev1.ParamsShape_PARAMS_SHAPE_NONE:
		if len(m.prefix) == 0 {
			return nil, nil
		}
	}
	out := append(make([]byte, 0, 64), '[')
	for i, p := range m.prefix {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, p...)
	}
	// A field without presence is always sent (its zero value too). A
	// field with presence (optional, a message) that is not set is null,
	// and left out when only such fields follow, so that the backend
	// applies its defaults for them.
	last := -1
	for i, fd := range m.fields {
		if req.Has(fd) || !fd.HasPresence() {
			last = i
		}
	}
	var err error
	for i, fd := range m.fields[:last+1] {
		if i > 0 || len(m.prefix) > 0 {
			out = append(out, ',')
		}
		if !req.Has(fd) && fd.HasPresence() {
			out = append(out, "null"...)
			continue
		}
		if out, err = m.enc.appendField(out, fd, req.Get(fd), 0); err != nil {
			return nil, err
		}
	}
	return append(out, ']'), nil
}

// fieldOpts caches each field's (wsbridge.v1.jsonrpc_field) option (nil
// when it has none): descriptors live as long as the process.
var fieldOpts sync.Map // protoreflect.FieldDescriptor -> *wsbridgev1.JsonRpcField

func fieldOptions(fd protoreflect.FieldDescriptor) *wsbridgev1.JsonRpcField {
	if v, ok := fieldOpts.Load(fd); ok {
		return v.(*wsbridgev1.JsonRpcField)
	}
	var fo *wsbridgev1.JsonRpcField
	if proto.HasExtension(fd.Options(), wsbridgev1.E_JsonrpcField) {
		fo, _ = proto.GetExtension(fd.Options(), wsbridgev1.E_JsonrpcField).(*wsbridgev1.JsonRpcField)
	}
	fieldOpts.Store(fd, fo)
	return fo
}

func is64(fd protoreflect.FieldDescriptor) bool {
	switch fd.Kind() {
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return true
	}
	return false
}

// isWellKnown reports whether md is one of the google.protobuf messages
// whose JSON form protojson special-cases (Timestamp, Struct, Any, ...):
// those are written and read by protojson.
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

func (e *encoding) appendMessage(dst []byte, m protoreflect.Message, depth int) ([]byte, error) {
	if depth > jsonscan.MaxDepth {
		return nil, jsonscan.ErrDepth
	}
	md := m.Descriptor()
	if isWellKnown(md) {
		b, err := protojson.MarshalOptions{Resolver: e.types}.Marshal(m.Interface())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", md.FullName(), err)
		}
		// protojson varies its white space on purpose; the params must not
		// (identical calls are found by their text).
		buf := bytes.NewBuffer(dst)
		if err := json.Compact(buf, b); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	dst = append(dst, '{')
	first := true
	fields := md.Fields()
	var err error
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = jsonenc.AppendString(dst, fd.JSONName())
		dst = append(dst, ':')
		if dst, err = e.appendField(dst, fd, m.Get(fd), depth); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

func (e *encoding) appendField(dst []byte, fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) ([]byte, error) {
	var err error
	switch {
	case fd.IsList():
		l := v.List()
		dst = append(dst, '[')
		for i := range l.Len() {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = e.appendSingular(dst, fd, l.Get(i), depth); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case fd.IsMap():
		mp := v.Map()
		keys := make([]protoreflect.MapKey, 0, mp.Len())
		mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k)
			return true
		})
		slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return compareKeys(a, b) })
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonenc.AppendString(dst, k.String())
			dst = append(dst, ':')
			if dst, err = e.appendSingular(dst, fd.MapValue(), mp.Get(k), depth); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	}
	return e.appendSingular(dst, fd, v, depth)
}

func compareKeys(a, b protoreflect.MapKey) int {
	switch av := a.Interface().(type) {
	case string:
		bv := b.String()
		switch {
		case av < bv:
			return -1
		case av > bv:
			return 1
		}
		return 0
	case bool:
		if av == b.Bool() {
			return 0
		}
		if !av {
			return -1
		}
		return 1
	case int32, int64:
		return cmp.Compare(a.Int(), b.Int())
	}
	return cmp.Compare(a.Uint(), b.Uint())
}

func (e *encoding) integerEncoding(fd protoreflect.FieldDescriptor) wsbridgev1.IntegerEncoding {
	if fo := fieldOptions(fd); fo.GetIntegers() != wsbridgev1.IntegerEncoding_INTEGER_ENCODING_UNSPECIFIED {
		return fo.GetIntegers()
	}
	return e.integers
}

func (e *encoding) bytesEncoding(fd protoreflect.FieldDescriptor) wsbridgev1.BytesEncoding {
	if fo := fieldOptions(fd); fo.GetBytes() != wsbridgev1.BytesEncoding_BYTES_ENCODING_UNSPECIFIED {
		return fo.GetBytes()
	}
	return e.bytes
}

func (e *encoding) appendSingular(dst []byte, fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) ([]byte, error) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(dst, v.Bool()), nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(dst, v.Int(), 10), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(dst, v.Uint(), 10), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n := v.Int()
		switch e.integerEncoding(fd) {
		case wsbridgev1.IntegerEncoding_INTEGER_ENCODING_STRING:
			return append(strconv.AppendInt(append(dst, '"'), n, 10), '"'), nil
		case wsbridgev1.IntegerEncoding_INTEGER_ENCODING_HEX:
			dst = append(dst, '"')
			u := uint64(n)
			if n < 0 {
				dst, u = append(dst, '-'), uint64(-n) // -(MinInt64) wraps to itself, which is its magnitude as uint64
			}
			return append(strconv.AppendUint(append(dst, '0', 'x'), u, 16), '"'), nil
		}
		return strconv.AppendInt(dst, n, 10), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		n := v.Uint()
		switch e.integerEncoding(fd) {
		case wsbridgev1.IntegerEncoding_INTEGER_ENCODING_STRING:
			return append(strconv.AppendUint(append(dst, '"'), n, 10), '"'), nil
		case wsbridgev1.IntegerEncoding_INTEGER_ENCODING_HEX:
			return append(strconv.AppendUint(append(dst, '"', '0', 'x'), n, 16), '"'), nil
		}
		return strconv.AppendUint(dst, n, 10), nil
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		switch {
		case math.IsNaN(f):
			return append(dst, `"NaN"`...), nil
		case math.IsInf(f, 1):
			return append(dst, `"Infinity"`...), nil
		case math.IsInf(f, -1):
			return append(dst, `"-Infinity"`...), nil
		}
		bits := 64
		if fd.Kind() == protoreflect.FloatKind {
			bits = 32
		}
		return strconv.AppendFloat(dst, f, 'g', -1, bits), nil
	case protoreflect.StringKind:
		return jsonenc.AppendString(dst, v.String()), nil
	case protoreflect.BytesKind:
		b := v.Bytes()
		if e.bytesEncoding(fd) == wsbridgev1.BytesEncoding_BYTES_ENCODING_HEX {
			dst = append(dst, '"', '0', 'x')
			dst = hex.AppendEncode(dst, b)
			return append(dst, '"'), nil
		}
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, b)
		return append(dst, '"'), nil
	case protoreflect.EnumKind:
		if fd.Enum().FullName() == "google.protobuf.NullValue" {
			return append(dst, "null"...), nil
		}
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return jsonenc.AppendString(dst, string(ev.Name())), nil
		}
		return strconv.AppendInt(dst, int64(v.Enum()), 10), nil
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return e.appendMessage(dst, v.Message(), depth+1)
	}
	return nil, fmt.Errorf("field %s: kind %v", fd.FullName(), fd.Kind())
}
