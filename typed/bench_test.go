package typed

import "testing"

// BenchmarkResult: one result decoded into a response message, with a
// field the message does not have (skipped) and a well-known type.
func BenchmarkResult(b *testing.B) {
	m := method(b, kitchen(b), "kitchen.v1.Kitchen.Echo")
	raw := []byte(`{"i64":"0x20000000000001","u64":18446744073709551615,"text":"0123456789abcd","list":[1,"2","0x3"],` +
		`"inner":{"name":"a","children":[{"name":"b"}]},"unknown":{"k":[1,{"x":"]"}]},"extra":{"k":[1,null]}}`)
	if _, err := m.Result(raw); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for range b.N {
		if _, err := m.ResultOfValid(raw); err != nil {
			b.Fatal(err)
		}
	}
}
