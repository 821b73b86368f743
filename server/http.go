package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// httpHandler routes the HTTP listener: REST through grpc-gateway (wired
// in-process to the gRPC service implementations, so REST pays no extra
// gRPC hop) and GET /__stats.
func (s *Server) httpHandler() (http.Handler, error) {
	gw := s.newGatewayMux()
	ctx := context.Background()
	if err := wsbridgev1.RegisterBridgeServiceHandlerServer(ctx, gw, bridgeService{s: s}); err != nil {
		return nil, err
	}
	if err := wsbridgev1.RegisterStatsServiceHandlerServer(ctx, gw, statsService{s: s}); err != nil {
		return nil, err
	}
	// Streaming REST routes go through a gRPC client connection.
	streamGW := s.newGatewayMux()
	if err := wsbridgev1.RegisterBridgeServiceHandlerClient(ctx, streamGW, wsbridgev1.NewBridgeServiceClient(s.inprocConn)); err != nil {
		return nil, err
	}
	if err := wsbridgev1.RegisterStatsServiceHandlerClient(ctx, streamGW, wsbridgev1.NewStatsServiceClient(s.inprocConn)); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	mux.HandleFunc("/rpc", s.serveRPC)
	mux.Handle("/v1/subscribe", sseOr(s.serveSubscribeSSE, s.restHandler(streamGW)))
	mux.HandleFunc("GET /openapi.json", serveOpenAPI)
	ops := &opsRoutes{stats: s.restHandler(gw), watch: sseOr(s.serveStatsSSE, s.restHandler(streamGW))}
	if s.opts.AdminAddr == "" {
		s.registerOps(mux, ops)
	} else {
		// They are on the admin listener: clients see none of them.
		gone := func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }
		mux.HandleFunc("/v1/stats", gone)
		mux.HandleFunc("/v1/stats:watch", gone)
		s.admin = ops
	}
	root := s.restHandler(gw)
	if s.typed != nil {
		// The typed services' routes; what they do not match goes on to
		// wsbridge.v1's REST routes.
		var err error
		if root, err = s.typedHTTP(s.typed, root); err != nil {
			return nil, err
		}
	}
	mux.Handle("/", root)
	return s.requireAuth(mux), nil
}

// restHandler marks requests as REST for the counters, refuses a body
// that does not say it is JSON (415), and caps the body at the message
// limit: 413 before decoding when Content-Length says so, and 413 (not
// grpc-gateway's 400) when a streamed body runs over. The content type
// matters for more than parsing: a web page may send a text/plain (or
// form) POST to any origin without asking first, never an
// application/json one.
func (s *Server) restHandler(gw http.Handler) http.Handler {
	limit := s.bridge.MaxMessageBytes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !isJSON(r.Header.Get("Content-Type")) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnsupportedMediaType)
			fmt.Fprintf(w, `{"code":%d,"message":"Content-Type must be application/json","details":[]}`+"\n", codes.InvalidArgument)
			return
		}
		if r.ContentLength > limit {
			writeBodyTooLarge(w, limit)
			return
		}
		body := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit), limit: limit}
		r.Body = body
		ctx := withFace(r.Context(), faceREST)
		ctx = context.WithValue(ctx, limitedBodyKey{}, body)
		gw.ServeHTTP(w, r.WithContext(ctx))
	})
}

// isJSON reports whether a Content-Type names JSON: application/json or a
// +json type, with any parameters.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

type limitedBodyKey struct{}

// limitedBody remembers that the body went over the limit, because
// grpc-gateway turns the read error into a plain INVALID_ARGUMENT.
type limitedBody struct {
	io.ReadCloser
	limit int64
	over  bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		b.over = true
	}
	return n, err
}

func writeBodyTooLarge(w http.ResponseWriter, limit int64) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	fmt.Fprintf(w, `{"code":%d,"message":"request body exceeds the %d-byte limit","details":[]}`+"\n", codes.ResourceExhausted, limit)
}

func bodyLimitErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if b, ok := r.Context().Value(limitedBodyKey{}).(*limitedBody); ok && b.over {
		writeBodyTooLarge(w, b.limit)
		return
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// sseOr serves a GET that asks for text/event-stream with sse, anything
// else with next.
func sseOr(sse http.HandlerFunc, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && wantsSSE(r) {
			sse(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
