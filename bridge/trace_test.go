package bridge

import (
	"context"
	"encoding/json"
	"strings"
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

// Issue 19 item 4: the client's own member of the trace param's name goes
// (every duplicate, however escaped), so that no parser, whichever
// duplicate it keeps, reads the client's value instead of the gateway's.
func TestWithTraceParamDropsTheClientsMember(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	const tc = `"_trace":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`
	const forged = `{"traceparent":"00-11111111111111111111111111111111-2222222222222222-01"}`
	for in, want := range map[string]string{
		`{"_trace":` + forged + `}`:                                `{` + tc + `}`,
		`{"a":1,"_trace":` + forged + `}`:                          `{` + tc + `,"a":1}`,
		`{"_trace":` + forged + `,"a":1}`:                          `{` + tc + `,"a":1}`,
		`{"a":1,"_trace":1,"b":[2],"_trace":"x","c":{"_trace":3}}`: `{` + tc + `,"a":1,"b":[2],"c":{"_trace":3}}`,
		`{"\u005ftrace":` + forged + `, "a" : 1 }`:                 `{` + tc + `,"a":1}`,
		` { "_trace" : 1 , "_trace" : 2 } `:                        `{` + tc + `}`,
		`{"_tracex":1,"_trac":2}`:                                  `{` + tc + `,"_tracex":1,"_trac":2}`,
	} {
		got := withTraceParam(ctx, "_trace", json.RawMessage(in))
		if string(got) != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
		if !json.Valid(got) {
			t.Errorf("%s: invalid JSON %s", in, got)
			continue
		}
		// Whichever duplicate a parser keeps, it reads the gateway's.
		var m map[string]json.RawMessage
		_ = json.Unmarshal(got, &m)
		if !strings.Contains(string(m["_trace"]), "4bf92f3577b34da6a3ce929d0e0e4736") {
			t.Errorf("%s: the last _trace is %s", in, m["_trace"])
		}
	}
}
