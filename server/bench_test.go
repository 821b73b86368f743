package server

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/wsbridge/wsbridge/internal/jsonpb"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

var benchFrame = []byte(`{"jsonrpc":"2.0","id":"client-7","method":"eth_getBalance","params":{"k":"0123456789abcd"}}`)

// BenchmarkParseClientFrame: one /ws or /rpc request, from bytes to a
// checked request.
func BenchmarkParseClientFrame(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		reqs, _ := jsonrpc.ParseRequests(benchFrame)
		if reqs[0].Err != nil {
			b.Fatal(reqs[0].Err)
		}
	}
}

// BenchmarkRestoreClientID: the reply with the client's id put back.
func BenchmarkRestoreClientID(b *testing.B) {
	id := []byte(`"client-7"`)
	result := []byte(`{"k":"0123456789abcd"}`)
	b.ReportAllocs()
	for range b.N {
		_ = jsonrpc.AppendResult(nil, id, result)
	}
}

// BenchmarkResultToValue compares the gRPC face's result conversion with
// protojson's.
func BenchmarkResultToValue(b *testing.B) {
	raw := []byte(`{"k":"0123456789abcd","n":[1,2,3],"ok":true}`)
	b.Run("jsonpb", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := jsonpb.ToValue(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			v, err := jsonpb.ToValue(raw)
			if err != nil {
				b.Fatal(err)
			}
			if err := protojson.Unmarshal(raw, v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
