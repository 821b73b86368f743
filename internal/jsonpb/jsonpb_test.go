package jsonpb

import (
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

var seeds = []string{`{"a":[1,2.5,-3e2,true,false,null,"s\u00e9\n"],"b":{}}`, `[]`, `"x"`, `1e400`, `"\ud800"`, `"\ud83d\ude00"`,
	`{"k":"` + "\xff" + `"}`, "\"0\xa5\xa5\xa5\xa50\\\\b0000\"", `{"b":[0,true],"b":{}}`, `123456789012345678901234567890`, `-0`, ` [ 1 , { "a" : "b" } ] `}

func TestToValueMatchesProtojson(t *testing.T) {
	for _, s := range seeds {
		checkSame(t, s)
	}
}

func checkSame(t *testing.T, s string) {
	t.Helper()
	var want structpb.Value
	wantErr := protojson.Unmarshal([]byte(s), &want)
	got, err := ToValue([]byte(s))
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q: error %v, protojson %v", s, err, wantErr)
	}
	if err == nil && !proto.Equal(got, &want) {
		t.Fatalf("%q: %v, protojson %v", s, got, &want)
	}
}

func TestAppendValueRoundTrip(t *testing.T) {
	for _, s := range seeds {
		v, err := ToValue([]byte(s))
		if err != nil {
			continue
		}
		out, err := AppendValue(nil, v)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ToValue(out)
		if err != nil || !proto.Equal(back, v) {
			t.Fatalf("%s -> %s -> %v (%v)", s, out, back, err)
		}
	}
	if _, err := AppendValue(nil, &structpb.Value{}); err == nil {
		t.Fatal("a Value without a kind encoded")
	}
}

func FuzzToValue(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		checkSame(t, s)
		if v, err := ToValue([]byte(s)); err == nil {
			out, err := AppendValue(nil, v)
			if err != nil || !json.Valid(out) {
				t.Fatalf("%q re-encoded as %q: %v", s, out, err)
			}
		}
	})
}
