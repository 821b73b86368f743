package rpcscan

import (
	"encoding/json"
	"reflect"
	"testing"
)

func members(t *testing.T, s string) map[string]string {
	t.Helper()
	got := map[string]string{}
	if err := Object([]byte(s), func(k, v []byte) bool { got[string(k)] = string(v); return true }); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestObject(t *testing.T) {
	got := members(t, ` { "jsonrpc" : "2.0", "id":"a\"}b", "method":"m", "params":{"x":[1,{"y":"]}"}]},"n":-1.5e3,"t":true,"z":null, "Method":1, "k\u0065y":2 } `)
	want := map[string]string{"jsonrpc": `"2.0"`, "id": `"a\"}b"`, "method": `"m"`, "params": `{"x":[1,{"y":"]}"}]}`,
		"n": "-1.5e3", "t": "true", "z": "null", "Method": "1", "key": "2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if len(members(t, `{}`)) != 0 {
		t.Fatal("empty object")
	}
	if err := Object([]byte(`[1]`), func(k, v []byte) bool { return true }); err != ErrNotObject {
		t.Fatal(err)
	}
}

func TestArray(t *testing.T) {
	got, err := Array([]byte(` [ {"a":"]"} , 2,"x",[3,[4]] ] `))
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range got {
		s = append(s, string(e))
	}
	if !reflect.DeepEqual(s, []string{`{"a":"]"}`, `2`, `"x"`, `[3,[4]]`}) {
		t.Fatalf("%q", s)
	}
	if got, _ := Array([]byte(`[]`)); len(got) != 0 {
		t.Fatal("empty array")
	}
}

// FuzzObject: on valid JSON objects, the spans match encoding/json's
// decoding member by member.
func FuzzObject(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"\"","b":[{"c":"}"}]}`, `{"\u0061":{}}`, `{ }`, `{"a":1,"a":2}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		var want map[string]json.RawMessage
		if json.Unmarshal([]byte(s), &want) != nil {
			return // not an object
		}
		got := map[string]json.RawMessage{}
		if err := Object([]byte(s), func(k, v []byte) bool { got[string(k)] = v; return true }); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d members, encoding/json %d", s, len(got), len(want))
		}
		for k, v := range want {
			if !json.Valid(got[k]) || string(compact(t, got[k])) != string(compact(t, v)) {
				t.Fatalf("%s: member %q = %s, encoding/json %s", s, k, got[k], v)
			}
		}
	})
}

func compact(t *testing.T, b []byte) []byte {
	var out []byte
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		t.Fatal(err)
	}
	out, _ = json.Marshal(x)
	return out
}
