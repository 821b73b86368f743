// Package typed maps a user's own protobuf services onto JSON-RPC methods.
// The mapping options of wsbridge/v1/options.proto, on the user's .proto
// and loaded at run time from a descriptor set, say which JSON-RPC method
// each rpc calls, how its request message becomes the params and how the
// result becomes its response message. Nothing is generated: requests and
// responses are dynamicpb messages.
//
// The package knows protobuf and JSON, and nothing of sockets or of gRPC
// serving: server/ registers the services and calls the bridge.
package typed

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unicode"

	// The google.api.http rules of a descriptor set are parsed (and served
	// by server/) only when their extension is known when the set is read.
	_ "google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// API is the services of one or more descriptor sets that carry mapping
// options.
type API struct {
	// Files holds every file of the sets, imports included.
	Files *protoregistry.Files
	// Types resolves the sets' messages and extensions (google.protobuf.Any
	// in a result, error details), falling back to the linked-in types.
	Types *Types
	// Services are those with mapping options, in the order of the sets.
	Services []*Service
}

// Service is one mapped service.
type Service struct {
	Desc    protoreflect.ServiceDescriptor
	Methods []*Method
}

// Method is one mapped rpc.
type Method struct {
	Desc protoreflect.MethodDescriptor
	// JSONRPC is the backend method it calls (for a server-streaming rpc,
	// the subscribe method).
	JSONRPC string
	// Streaming is set for a server-streaming rpc: a backend subscription,
	// each notification's result one stream message.
	Streaming bool

	shape       wsbridgev1.ParamsShape
	fields      []protoreflect.FieldDescriptor // POSITIONAL, in order
	prefix      []json.RawMessage
	resultField protoreflect.FieldDescriptor // nil: the result is the response message
	enc         encoding
}

// NewRequest returns an empty request message.
func (m *Method) NewRequest() *dynamicpb.Message { return dynamicpb.NewMessage(m.Desc.Input()) }

// NewResponse returns an empty response message.
func (m *Method) NewResponse() *dynamicpb.Message { return dynamicpb.NewMessage(m.Desc.Output()) }

// encoding is what a service says of the JSON it writes and reads.
type encoding struct {
	integers      wsbridgev1.IntegerEncoding
	bytes         wsbridgev1.BytesEncoding
	rejectUnknown bool
	types         *Types
}

// LoadOptions say what the gateway around the API is like.
type LoadOptions struct {
	// IsSubscribe reports whether the gateway takes method for one that
	// makes a subscription (its --subscribe-methods): a server-streaming
	// rpc must call one, and a unary rpc must not.
	IsSubscribe func(method string) bool
	// Reserved reports whether a service name is the gateway's own.
	Reserved func(name protoreflect.FullName) bool
}

// Load reads the descriptor sets at paths (each made by `buf build -o` or
// `protoc --include_imports --descriptor_set_out`) and checks every
// mapping. An error names the file, the rpc or field, and the problem.
func Load(paths []string, opts LoadOptions) (*API, error) {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]*descriptorpb.FileDescriptorProto{}
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("descriptor set: %w", err)
		}
		var one descriptorpb.FileDescriptorSet
		// proto.Unmarshal resolves extensions from the linked-in types: the
		// wsbridge.v1 options and google.api.http are parsed, not left
		// unknown.
		if err := proto.Unmarshal(data, &one); err != nil {
			return nil, fmt.Errorf("descriptor set %s: not a FileDescriptorSet (make it with `buf build -o FILE.binpb` or `protoc --include_imports --descriptor_set_out=FILE`): %w", path, err)
		}
		for _, f := range one.GetFile() {
			if prev, ok := seen[f.GetName()]; ok {
				if !proto.Equal(prev, f) {
					return nil, fmt.Errorf("descriptor set %s: %s differs from the file of that name in an earlier set", path, f.GetName())
				}
				continue
			}
			seen[f.GetName()] = f
			set.File = append(set.File, f)
		}
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		return nil, fmt.Errorf("descriptor set %s: %w (were its imports included? buf build includes them; protoc needs --include_imports)", strings.Join(paths, ", "), err)
	}
	api := &API{Files: files, Types: newTypes(files)}
	var errs []error
	for _, fp := range set.GetFile() {
		fd, _ := files.FindFileByPath(fp.GetName())
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			svc, err := loadService(sd, api.Types, opts)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if svc != nil {
				api.Services = append(api.Services, svc)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(api.Services) == 0 {
		return nil, fmt.Errorf("descriptor set %s: no service has the (wsbridge.v1.jsonrpc_service) option or an rpc with (wsbridge.v1.jsonrpc): nothing to serve", strings.Join(paths, ", "))
	}
	return api, nil
}

// loadService checks sd's mappings; it returns nil for a service without
// mapping options.
func loadService(sd protoreflect.ServiceDescriptor, types *Types, opts LoadOptions) (*Service, error) {
	sopts, _ := proto.GetExtension(sd.Options(), wsbridgev1.E_JsonrpcService).(*wsbridgev1.JsonRpcService)
	mapped := proto.HasExtension(sd.Options(), wsbridgev1.E_JsonrpcService)
	for i := range sd.Methods().Len() {
		mapped = mapped || proto.HasExtension(sd.Methods().Get(i).Options(), wsbridgev1.E_Jsonrpc)
	}
	if !mapped {
		return nil, nil
	}
	if opts.Reserved != nil && opts.Reserved(sd.FullName()) {
		return nil, fmt.Errorf("service %s: the gateway serves a service of that name itself", sd.FullName())
	}
	enc := encoding{integers: sopts.GetIntegers(), bytes: sopts.GetBytes(), rejectUnknown: sopts.GetRejectUnknownFields(), types: types}
	svc := &Service{Desc: sd}
	var errs []error
	for i := range sd.Methods().Len() {
		m, err := loadMethod(sd.Methods().Get(i), sopts, enc, opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("rpc %s: %w", sd.Methods().Get(i).FullName(), err))
			continue
		}
		svc.Methods = append(svc.Methods, m)
	}
	return svc, errors.Join(errs...)
}

func loadMethod(md protoreflect.MethodDescriptor, sopts *wsbridgev1.JsonRpcService, enc encoding, opts LoadOptions) (*Method, error) {
	mopts, _ := proto.GetExtension(md.Options(), wsbridgev1.E_Jsonrpc).(*wsbridgev1.JsonRpcMethod)
	m := &Method{Desc: md, JSONRPC: mopts.GetMethod(), Streaming: md.IsStreamingServer(), enc: enc}
	if md.IsStreamingClient() {
		return nil, errors.New("client-streaming and bidirectional rpcs do not map onto JSON-RPC: only unary and server-streaming ones do")
	}
	if m.JSONRPC == "" {
		m.JSONRPC = sopts.GetMethodPrefix() + lowerCamel(string(md.Name()))
	}
	isSub := opts.IsSubscribe != nil && opts.IsSubscribe(m.JSONRPC)
	switch {
	case m.Streaming && !isSub:
		return nil, fmt.Errorf("it is server-streaming, so its method %q must make a backend subscription, but the gateway's --subscribe-methods do not match it (set (wsbridge.v1.jsonrpc).method to the subscribe method, e.g. eth_subscribe)", m.JSONRPC)
	case !m.Streaming && isSub:
		return nil, fmt.Errorf("its method %q makes a subscription, which needs a server-streaming rpc (returns (stream ...))", m.JSONRPC)
	}

	in := md.Input()
	m.shape = mopts.GetParams()
	if m.shape == wsbridgev1.ParamsShape_PARAMS_SHAPE_UNSPECIFIED {
		m.shape = sopts.GetParams()
	}
	if m.shape == wsbridgev1.ParamsShape_PARAMS_SHAPE_UNSPECIFIED {
		m.shape = wsbridgev1.ParamsShape_PARAMS_SHAPE_NAMED
	}
	for _, raw := range mopts.GetParamsPrefix() {
		if !json.Valid([]byte(raw)) {
			return nil, fmt.Errorf("params_prefix %q is not a JSON value", raw)
		}
		m.prefix = append(m.prefix, json.RawMessage(raw))
	}
	switch m.shape {
	case wsbridgev1.ParamsShape_PARAMS_SHAPE_NAMED:
		if len(mopts.GetFields()) > 0 || len(m.prefix) > 0 {
			return nil, errors.New("fields and params_prefix order a params array: they need params POSITIONAL (or NONE, for params_prefix alone)")
		}
	case wsbridgev1.ParamsShape_PARAMS_SHAPE_NONE:
		if in.Fields().Len() > 0 {
			return nil, fmt.Errorf("params NONE sends nothing of the request, but %s has fields (%s): use NAMED or POSITIONAL, or an empty request", in.FullName(), fieldNames(in.Fields()))
		}
	case wsbridgev1.ParamsShape_PARAMS_SHAPE_POSITIONAL:
		names := mopts.GetFields()
		if len(names) == 0 {
			for i := range in.Fields().Len() {
				names = append(names, string(in.Fields().Get(i).Name()))
			}
			slices.SortFunc(names, func(a, b string) int {
				return int(in.Fields().ByName(protoreflect.Name(a)).Number() - in.Fields().ByName(protoreflect.Name(b)).Number())
			})
		}
		for _, name := range names {
			fd := in.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				return nil, fmt.Errorf("fields names %q, which %s does not have (it has %s)", name, in.FullName(), fieldNames(in.Fields()))
			}
			if slices.Contains(m.fields, fd) {
				return nil, fmt.Errorf("fields names %q twice", name)
			}
			m.fields = append(m.fields, fd)
		}
		if len(mopts.GetFields()) > 0 && len(m.fields) < in.Fields().Len() {
			var missing []string
			for i := range in.Fields().Len() {
				if fd := in.Fields().Get(i); !slices.Contains(m.fields, fd) {
					missing = append(missing, string(fd.Name()))
				}
			}
			return nil, fmt.Errorf("fields leaves out %s of %s, which would never reach the backend", strings.Join(missing, ", "), in.FullName())
		}
	default:
		return nil, fmt.Errorf("params %v is not a shape this gateway knows", m.shape)
	}

	out := md.Output()
	if name := mopts.GetResultField(); name != "" {
		m.resultField = out.Fields().ByName(protoreflect.Name(name))
		if m.resultField == nil {
			return nil, fmt.Errorf("result_field names %q, which %s does not have (it has %s)", name, out.FullName(), fieldNames(out.Fields()))
		}
	}
	if err := checkFieldOptions(in, map[protoreflect.FullName]bool{}); err != nil {
		return nil, err
	}
	if err := checkFieldOptions(out, map[protoreflect.FullName]bool{}); err != nil {
		return nil, err
	}
	return m, nil
}

// checkFieldOptions refuses a (wsbridge.v1.jsonrpc_field) option on a field
// it cannot apply to, in md and the messages it holds.
func checkFieldOptions(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) error {
	if seen[md.FullName()] {
		return nil
	}
	seen[md.FullName()] = true
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		fo := fieldOptions(fd)
		if fo.GetIntegers() != wsbridgev1.IntegerEncoding_INTEGER_ENCODING_UNSPECIFIED && !is64(fd) {
			return fmt.Errorf("field %s: (wsbridge.v1.jsonrpc_field).integers applies to 64-bit integer fields, and it is %v", fd.FullName(), fd.Kind())
		}
		if fo.GetBytes() != wsbridgev1.BytesEncoding_BYTES_ENCODING_UNSPECIFIED && fd.Kind() != protoreflect.BytesKind {
			return fmt.Errorf("field %s: (wsbridge.v1.jsonrpc_field).bytes applies to bytes fields, and it is %v", fd.FullName(), fd.Kind())
		}
		if fd.Message() != nil {
			if err := checkFieldOptions(fd.Message(), seen); err != nil {
				return err
			}
		}
	}
	return nil
}

func fieldNames(fields protoreflect.FieldDescriptors) string {
	if fields.Len() == 0 {
		return "no fields"
	}
	var names []string
	for i := range fields.Len() {
		names = append(names, string(fields.Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

// lowerCamel is GetBalance -> getBalance, ID -> iD is avoided: a leading
// run of capitals is lowered up to the last one before a lower-case letter
// (URLFor -> urlFor).
func lowerCamel(name string) string {
	r := []rune(name)
	for i := range r {
		if !unicode.IsUpper(r[i]) {
			break
		}
		if i > 0 && i+1 < len(r) && unicode.IsLower(r[i+1]) {
			break
		}
		r[i] = unicode.ToLower(r[i])
	}
	return string(r)
}
