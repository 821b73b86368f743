package jsonrpc

import (
	"strings"
	"testing"
)

var (
	benchRequest = []byte(`{"jsonrpc":"2.0","id":"client-7","method":"eth_getBalance","params":["0x407d73d8a49eeb85d32cf465507dd71d507100c1","latest"]}`)
	benchReply   = []byte(`{"jsonrpc":"2.0","id":12345,"result":{"k":"0123456789abcd","n":[1,2,3]}}`)
	benchBatch   = []byte(`[` + strings.Repeat(string(benchReply)+`,`, 7) + string(benchReply) + `]`)
	// benchParams are the params of an eth_subscription notification: a
	// new block header.
	benchParams = []byte(`{"subscription":"0x9ce59a13059e417087c02d3236a0b1cc","result":{"difficulty":"0x15d9223a23aa",` +
		`"extraData":"0xd983010305844765746887676f312e342e328777696e646f7773","gasLimit":"0x47e7c4","gasUsed":"0x38658",` +
		`"logsBloom":"0x` + strings.Repeat("0", 512) + `","miner":"0xf8b483dba2c3b7176a3da549ad41a48bb3121069",` +
		`"nonce":"0x084149998194cc5f","number":"0x1348c9","parentHash":"0x7736fab79e05dc611604d22470dadad26f56fe494421b5b333de816ce1f25701",` +
		`"receiptRoot":"0x2fab35823ad00c7bb388595cb46652fe7886e00660a01e867824d3dceb1c8d36","sha3Uncles":"0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",` +
		`"stateRoot":"0xb3346685172db67de536d8765c43c31009d0eb3bd9c501c9be3229203f15f378","timestamp":"0x56ffeff8",` +
		`"transactionsRoot":"0x0167ffa60e3ebc0b080cdb95f7c0087dd6c0e61413140e39d94d3468d7c9689f"}}`)
)

// BenchmarkParseRequests: one client request, and a batch of eight.
func BenchmarkParseRequests(b *testing.B) {
	for _, bc := range []struct {
		name  string
		frame []byte
	}{{"one", benchRequest}, {"batch", []byte(`[` + strings.Repeat(string(benchRequest)+`,`, 7) + string(benchRequest) + `]`)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if reqs, _ := ParseRequests(bc.frame); reqs[0].Err != nil {
					b.Fatal(reqs[0].Err)
				}
			}
		})
	}
}

// BenchmarkParseMessages: one backend frame, from bytes to the members of
// each message: a reply, a batch of eight, a subscription notification.
func BenchmarkParseMessages(b *testing.B) {
	for _, bc := range []struct {
		name  string
		frame []byte
	}{{"reply", benchReply}, {"batch", benchBatch}, {"notification", []byte(`{"jsonrpc":"2.0","method":"eth_subscription","params":` + string(benchParams) + `}`)}} {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]Message, 0, 8) // as a reader reuses one
			b.ReportAllocs()
			for range b.N {
				msgs, _, err := ParseMessages(buf[:0], bc.frame)
				if err != nil || msgs[0].Kind() == KindInvalid {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBrokenFrameIDs: the ids of a batch cut off in its second reply.
func BenchmarkBrokenFrameIDs(b *testing.B) {
	frame := benchBatch[:len(benchReply)*3/2]
	b.ReportAllocs()
	for range b.N {
		if len(BrokenFrameIDs(frame)) != 2 {
			b.Fatal("ids")
		}
	}
}

// BenchmarkSubscription: reading a notification's subscription id,
// putting another in its place, and finding its result.
func BenchmarkSubscription(b *testing.B) {
	b.Run("id", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if SubscriptionID(benchParams) == nil {
				b.Fatal("no id")
			}
		}
	})
	b.Run("with-id", func(b *testing.B) {
		id := []byte(`"0x1"`)
		b.ReportAllocs()
		for range b.N {
			if len(WithSubscriptionID(benchParams, id)) >= len(benchParams) {
				b.Fatal("not replaced")
			}
		}
	})
	b.Run("result", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, ok := SubscriptionResult(benchParams); !ok {
				b.Fatal("no result")
			}
		}
	})
}
