package server

import (
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/gen/openapiv2"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// WatchStats streams a snapshot every interval.
func (svc statsService) WatchStats(req *wsbridgev1.WatchStatsRequest, stream wsbridgev1.StatsService_WatchStatsServer) error {
	interval := time.Second
	if d := req.GetInterval(); d != nil {
		if err := d.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "interval: %v", err)
		}
		interval = d.AsDuration()
	}
	if interval < 100*time.Millisecond {
		return status.Errorf(codes.InvalidArgument, "interval must be at least 100ms, got %v", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	ctx := stream.Context()
	for {
		if err := stream.Send(svc.s.snapshot()); err != nil {
			return err
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// serveOpenAPI is GET /openapi.json: the OpenAPI (Swagger 2.0) description
// generated from the same HTTP rules as the REST routes.
func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapiv2.Spec)
}
