package bridge

import (
	"context"
	"encoding/json"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestWithTraceParam(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	const tc = `"trace":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`
	for in, want := range map[string]string{
		`{"a":1}`:      `{` + tc + `,"a":1}`,
		` { "a" : 1 }`: `{` + tc + `,"a" : 1 }`,
		`{}`:           `{` + tc + `}`,
		` {  } `:       `{` + tc + `} `,
		`[1]`:          `[1]`,
		``:             ``,
	} {
		got := string(withTraceParam(ctx, "trace", json.RawMessage(in)))
		if got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
		if want != "" && !json.Valid([]byte(got)) {
			t.Errorf("%q: invalid JSON %s", in, got)
		}
	}
	if got := string(withTraceParam(context.Background(), "trace", json.RawMessage(`{"a":1}`))); got != `{"a":1}` {
		t.Errorf("without a span: %s", got)
	}
}
