package server

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"go.yaml.in/yaml/v3"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/genproto/googleapis/api/serviceconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/jsonrpc"
	"github.com/wsbridge/wsbridge/typed"
)

// The typed face: the user's own services, loaded from descriptor sets
// (package typed), served on the gRPC port next to wsbridge.v1, and over
// REST (their google.api.http rules, or --http-rules), Connect and
// gRPC-Web on the HTTP port through vanguard, which turns those into gRPC
// calls to the same grpc.Server. A typed rpc is a Call with its params
// made from the request message and its result read into the response:
// the same method rules, limits, deadlines, stats and metrics (face
// grpc-typed).

// loadTyped loads Options.DescriptorSets and registers their services on
// s.grpc. It runs in New, before the server serves.
func (s *Server) loadTyped() (*typed.API, error) {
	if len(s.opts.DescriptorSets) == 0 {
		return nil, nil
	}
	api, err := typed.Load(s.opts.DescriptorSets, typed.LoadOptions{
		IsSubscribe: s.bridge.IsSubscribeMethod,
		Reserved: func(name protoreflect.FullName) bool {
			_, ok := s.grpc.GetServiceInfo()[string(name)]
			return ok
		},
	})
	if err != nil {
		return nil, err
	}
	for _, svc := range api.Services {
		desc := &grpc.ServiceDesc{ServiceName: string(svc.Desc.FullName()), HandlerType: (*any)(nil), Metadata: svc.Desc.ParentFile().Path()}
		for _, m := range svc.Methods {
			if m.Streaming {
				desc.Streams = append(desc.Streams, grpc.StreamDesc{StreamName: string(m.Desc.Name()), ServerStreams: true,
					Handler: func(_ any, stream grpc.ServerStream) error { return s.typedStream(m, stream) }})
				if s.typedStreams == nil {
					s.typedStreams = map[string]bool{}
				}
				s.typedStreams["/"+desc.ServiceName+"/"+string(m.Desc.Name())] = true
				continue
			}
			full := "/" + desc.ServiceName + "/" + string(m.Desc.Name())
			desc.Methods = append(desc.Methods, grpc.MethodDesc{MethodName: string(m.Desc.Name()),
				Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
					req := m.NewRequest()
					if err := dec(req); err != nil {
						return nil, err
					}
					if interceptor == nil {
						return s.typedCall(ctx, m, req)
					}
					return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: full},
						func(ctx context.Context, req any) (any, error) { return s.typedCall(ctx, m, req.(*dynamicpb.Message)) })
				}})
		}
		s.grpc.RegisterService(desc, struct{}{})
		s.log.Info("serving typed service", "service", desc.ServiceName, "rpcs", len(svc.Methods))
	}
	return api, nil
}

// typedCall serves one unary typed rpc.
func (s *Server) typedCall(ctx context.Context, m *typed.Method, req *dynamicpb.Message) (*dynamicpb.Message, error) {
	params, err := m.Params(req)
	var co bridge.CallOptions
	if err != nil {
		err = invalid("%s: %v", m.Desc.Input().FullName(), err)
	} else {
		co, err = callOptions(ctx, nil, false)
	}
	if err != nil {
		s.observeRefusal(ctx, typedFaceOf(ctx), m.JSONRPC, err)
		return nil, grpcError(err)
	}
	var resp *dynamicpb.Message
	err = s.unary(ctx, typedFaceOf(ctx), m.JSONRPC, params, co, func(raw json.RawMessage) (err error) {
		resp, err = m.ResultOfValid(raw) // the bridge checked the frame
		if err != nil {
			return resultMismatch(m, err)
		}
		return nil
	})
	if err != nil {
		return nil, grpcError(err)
	}
	return resp, nil
}

// resultMismatch is the error of a backend result that does not fit the
// rpc's response message: INTERNAL, for this call alone.
func resultMismatch(m *typed.Method, err error) error {
	return &bridge.Error{Code: bridge.CodeMalformedReply,
		Message: fmt.Sprintf("the backend's result for %s does not fit %s: %v", m.JSONRPC, m.Desc.Output().FullName(), err)}
}

// typedStream serves a server-streaming typed rpc: a backend subscription
// owned by the stream, each notification's result one message: one
// notification stream (see notifications) whose messages are typed. It
// ends when the client leaves (the subscription is released), when the
// subscription is lost or may have missed notifications (a gap, with
// --resubscribe: UNAVAILABLE with reason GAP, since a typed stream has no
// place to say so and go on), at the drain, or when the client cannot
// keep up (RESOURCE_EXHAUSTED).
func (s *Server) typedStream(m *typed.Method, stream grpc.ServerStream) error {
	ctx := stream.Context()
	req := m.NewRequest()
	err := stream.RecvMsg(req)
	var params json.RawMessage
	if err == nil {
		if params, err = m.Params(req); err != nil {
			err = invalid("%s: %v", m.Desc.Input().FullName(), err)
		}
	}
	var co bridge.CallOptions
	if err == nil {
		co, err = callOptions(ctx, nil, false)
	}
	if err == nil {
		err = s.checkMethod(m.JSONRPC, true, false)
	}
	if err != nil {
		return grpcError(err)
	}
	out := newStreamOut[*dynamicpb.Message](s)
	n := s.newNotifications(ctx, out.noteFace(func(_ string, params json.RawMessage) (*dynamicpb.Message, error) {
		msg, err := notificationMessage(m, params)
		if err != nil {
			return nil, resultMismatch(m, err)
		}
		return msg, nil
	}, true))
	defer n.close()
	_, release, err := n.consumer.CallHeld(ctx, m.JSONRPC, params, co)
	release() // its notifications queue behind nothing: the reply is not sent
	if err != nil {
		return grpcError(err)
	}
	return streamStatus(out.run(ctx, func(msg *dynamicpb.Message) error { return stream.SendMsg(msg) }, nil))
}

// notificationMessage reads a subscription notification's result into a
// stream message.
func notificationMessage(m *typed.Method, params json.RawMessage) (*dynamicpb.Message, error) {
	result, ok := jsonrpc.SubscriptionResult(params)
	if !ok {
		return nil, fmt.Errorf("notification params %.100s have no result (or two)", params)
	}
	return m.ResultOfValid(result) // the bridge checked the frame
}

// typedHTTP returns the handler of the typed services' REST, Connect and
// gRPC-Web routes (vanguard, calling s.grpc in process); requests for no
// typed route go to next.
func (s *Server) typedHTTP(api *typed.API, next http.Handler) (http.Handler, error) {
	var services []*vanguard.Service
	for _, svc := range api.Services {
		services = append(services, vanguard.NewServiceWithSchema(svc.Desc, s.grpc,
			vanguard.WithTypeResolver(api.Types),
			vanguard.WithMaxMessageBufferBytes(uint32(min(s.bridge.MaxMessageBytes(), 1<<31)))))
	}
	opts := []vanguard.TranscoderOption{
		vanguard.WithDefaultServiceOptions(
			vanguard.WithTargetProtocols(vanguard.ProtocolGRPC),
			vanguard.WithTargetCodecs(vanguard.CodecProto)),
		vanguard.WithUnknownHandler(next),
		vanguard.WithCodec(func(res vanguard.TypeResolver) vanguard.Codec { return jsonRequests{vanguard.NewJSONCodec(res)} }),
		vanguard.WithCodec(func(res vanguard.TypeResolver) vanguard.Codec { return protoRequests{vanguard.NewProtoCodec(res)} }),
		// gzip inflates up to the message limit only (see inflate.go).
		boundedGzip(s.bridge.MaxMessageBytes()),
	}
	if s.opts.HTTPRules != "" {
		rules, err := loadHTTPRules(s.opts.HTTPRules, api)
		if err != nil {
			return nil, err
		}
		opts = append(opts, vanguard.WithRules(rules...))
	}
	tc, err := vanguard.NewTranscoder(services, opts...)
	if err != nil {
		return nil, fmt.Errorf("typed HTTP routes: %w", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A web page may send a text/plain or form POST anywhere without
		// asking first; REST, Connect and gRPC-Web never use those.
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !typedContentType(r.Header.Get("Content-Type")) {
			next.ServeHTTP(w, r) // the REST handler answers 415
			return
		}
		// The rpc's handler sees this context (vanguard calls the gRPC
		// server in process): it names the door the call came in by.
		tc.ServeHTTP(w, r.WithContext(withFace(r.Context(), typedHTTPFace(r))))
	}), nil
}

// typedHTTPFace is the protocol of a request to the typed HTTP routes:
// gRPC-Web, Connect (streaming, or unary with its header or query), or
// REST.
func typedHTTPFace(r *http.Request) face {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case strings.HasPrefix(mt, "application/grpc-web"):
		return faceGRPCWeb
	case strings.HasPrefix(mt, "application/connect+"), r.Header.Get("Connect-Protocol-Version") != "",
		r.Method == http.MethodGet && r.URL.Query().Get("connect") != "":
		return faceConnect
	}
	return faceRESTTyped
}

// typedFaceOf is the face of a typed rpc: the HTTP door it came in by
// (typedHTTP), or gRPC.
func typedFaceOf(ctx context.Context) face {
	if f, ok := ctx.Value(faceKey{}).(face); ok {
		return f
	}
	return faceTyped
}

// jsonRequests and protoRequests are vanguard's codecs, but a request
// body that does not fit its message (a fraction for an integer, a string
// for a number, cut short) is the client's error, INVALID_ARGUMENT (HTTP
// 400), naming the message and the field, where vanguard would answer
// UNKNOWN (500). (The transcoder decodes with them what clients send; our
// own gRPC server's responses, which it also decodes, always fit.)
type jsonRequests struct{ *vanguard.JSONCodec }

func (c jsonRequests) Unmarshal(data []byte, msg proto.Message) error {
	return requestError(msg, c.JSONCodec.Unmarshal(data, msg))
}

func (c jsonRequests) UnmarshalField(data []byte, msg proto.Message, field protoreflect.FieldDescriptor) error {
	return requestError(msg, c.JSONCodec.UnmarshalField(data, msg, field))
}

type protoRequests struct{ *vanguard.ProtoCodec }

func (c protoRequests) Unmarshal(data []byte, msg proto.Message) error {
	return requestError(msg, c.ProtoCodec.Unmarshal(data, msg))
}

func requestError(msg proto.Message, err error) error {
	if err == nil {
		return nil
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("the request does not fit %s: %w", msg.ProtoReflect().Descriptor().FullName(), err))
}

// typedContentType reports whether ct is one the typed routes take.
func typedContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "application/proto" || strings.HasPrefix(mt, "application/connect+") ||
		strings.HasPrefix(mt, "application/grpc")
}

// loadHTTPRules reads a gRPC API configuration YAML (as grpc-gateway's
// grpc_api_configuration) and returns its HTTP rules. Each rule must name
// an rpc of the typed services.
func loadHTTPRules(path string, api *typed.API) ([]*annotations.HttpRule, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("HTTP rules: %w", err)
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("HTTP rules %s: %w", path, err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("HTTP rules %s: %w", path, err)
	}
	var svc serviceconfig.Service
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, &svc); err != nil {
		return nil, fmt.Errorf("HTTP rules %s: not a gRPC API configuration (type: google.api.Service, http: rules: ...): %w", path, err)
	}
	rules := svc.GetHttp().GetRules()
	if len(rules) == 0 {
		return nil, fmt.Errorf("HTTP rules %s: no http.rules", path)
	}
	for _, r := range rules {
		d, err := api.Files.FindDescriptorByName(protoreflect.FullName(r.GetSelector()))
		if _, ok := d.(protoreflect.MethodDescriptor); err != nil || !ok {
			return nil, fmt.Errorf("HTTP rules %s: selector %q names no rpc of the descriptor sets", path, r.GetSelector())
		}
	}
	return rules, nil
}

// registerReflection serves gRPC server reflection (v1 and v1alpha) for
// every registered service, the typed ones included.
func (s *Server) registerReflection(api *typed.API) {
	opts := reflection.ServerOptions{Services: s.grpc}
	if api != nil {
		opts.DescriptorResolver = files{api.Files}
		opts.ExtensionResolver = api.Types
	}
	reflectionv1.RegisterServerReflectionServer(s.grpc, reflection.NewServerV1(opts))
	reflectionv1alpha.RegisterServerReflectionServer(s.grpc, reflection.NewServer(opts))
}

// files resolves descriptors from the linked-in files first, then from the
// descriptor sets.
type files struct{ typed *protoregistry.Files }

var _ protodesc.Resolver = files{}

func (f files) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if fd, err := protoregistry.GlobalFiles.FindFileByPath(path); err == nil {
		return fd, nil
	}
	return f.typed.FindFileByPath(path)
}

func (f files) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(name); err == nil {
		return d, nil
	}
	return f.typed.FindDescriptorByName(name)
}
