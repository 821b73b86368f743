package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func members(t *testing.T, s string) map[string]string {
	t.Helper()
	got := map[string]string{}
	i := SkipSpace([]byte(s), 0)
	if end := Object([]byte(s), i, func(k, v []byte) { got[string(k)] = string(v) }); end < 0 {
		t.Fatalf("%s: not an object", s)
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
	if Object([]byte(`[1]`), 0, func(k, v []byte) {}) != -1 {
		t.Fatal("an array read as an object")
	}
}

func TestArray(t *testing.T) {
	var got []string
	b := []byte(` [ {"a":"]"} , 2,"x",[3,[4]] ] `)
	if end := Array(b, 1, func(e []byte) { got = append(got, string(e)) }); end != len(b)-1 {
		t.Fatalf("end %d", end)
	}
	if !reflect.DeepEqual(got, []string{`{"a":"]"}`, `2`, `"x"`, `[3,[4]]`}) {
		t.Fatalf("%q", got)
	}
	if Array([]byte(`[]`), 0, func([]byte) { t.Fatal("an element in []") }) != 2 {
		t.Fatal("empty array")
	}
}

// TestCutOff: on text that ends or breaks early, the scan says -1 after
// passing on what came before.
func TestCutOff(t *testing.T) {
	for _, tc := range []struct {
		in   string
		seen string // the members seen, name=value;
	}{
		{`{"a":1,"b":{"c":`, `a=1;`},
		{`{"a":1`, ``}, // 1 may go on: 12
		{`{"a":"x\"`, ``},
		{`{"a":[1,2],"b" 3}`, `a=[1,2];`},
		{`{"a":1 2}`, `a=1;`},
		{`{"a":1,}`, `a=1;`},
		{`{"\x":1}`, ``},
		{`{1:1}`, ``},
		{``, ``},
	} {
		var seen strings.Builder
		end := Object([]byte(tc.in), 0, func(k, v []byte) { seen.WriteString(string(k) + "=" + string(v) + ";") })
		if end != -1 || seen.String() != tc.seen {
			t.Errorf("Object(%s): end %d, seen %q; want -1, %q", tc.in, end, seen.String(), tc.seen)
		}
	}
	for _, in := range []string{`[1,2`, `[1 2]`, `[1,`, `[`, `["]`} {
		if end := Array([]byte(in), 0, func([]byte) {}); end != -1 {
			t.Errorf("Array(%s) = %d", in, end)
		}
	}
	for _, in := range []string{`12`, `tru`, `"a`, `{"a":[}`, `[`, ``, `,`} {
		if end := ValueEnd([]byte(in), 0); end != -1 {
			t.Errorf("ValueEnd(%s) = %d", in, end)
		}
	}
}

func TestUnquote(t *testing.T) {
	for in, want := range map[string]string{`"a"`: "a", `"\u0061\n"`: "a\n", "\"\xff\"": "\xff", "\"\xff\\n\"": "\uFFFD\n", `"\ud800"`: "\uFFFD", `""`: ""} {
		if got, ok := Unquote([]byte(in)); !ok || got != want {
			t.Errorf("Unquote(%s) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{`1`, `"\x"`, ``, `"`} {
		if got, ok := Unquote([]byte(in)); ok {
			t.Errorf("Unquote(%s) = %q, ok", in, got)
		}
	}
}

// TestSkipDepth: the value at depth MaxDepth may hold nothing, one level
// less may hold a value.
func TestSkipDepth(t *testing.T) {
	for _, tc := range []struct {
		in    string
		depth int
		err   error
	}{
		{`1`, MaxDepth, nil}, {`1`, MaxDepth + 1, ErrDepth},
		{`[]`, MaxDepth, nil}, {`[ ]`, MaxDepth, nil}, {`{}`, MaxDepth, nil}, {`[1]`, MaxDepth, ErrDepth}, {`{"a":1}`, MaxDepth, ErrDepth},
		{`[[]]`, MaxDepth - 1, nil}, {`[[1]]`, MaxDepth - 1, ErrDepth}, {`[[],[]]`, MaxDepth - 1, nil},
		{`{"a":[],"b":{}}`, MaxDepth - 1, nil}, {`{"a":"[1]"}`, MaxDepth - 1, nil},
		{strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), 0, nil},
		{strings.Repeat("[", MaxDepth+1) + "1" + strings.Repeat("]", MaxDepth+1), 0, ErrDepth},
	} {
		s := Scanner{B: []byte(tc.in + " ")}
		got, err := s.Skip(tc.depth)
		if !errors.Is(err, tc.err) || err == nil && (string(got) != tc.in || s.I != len(tc.in)) {
			t.Errorf("Skip(%.20s, %d) = %.20s, %v; want %v", tc.in, tc.depth, got, err, tc.err)
		}
	}
}

// FuzzObject: on any text no panic; on a valid JSON object, the members
// are those encoding/json finds, span for span (names that are not UTF-8
// aside), and the object ends where the text does.
func FuzzObject(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"\"","b":[{"c":"}"}]}`, `{"\\\"\\":"\\\\"}`, `{"\u0061":{}}`, `{ }`, `{"a":1,"a":2}`, `{"a":[1,`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		i := SkipSpace(b, 0)
		type member struct{ name, value string }
		var got []member
		// Names that are not UTF-8 stay as they are; encoding/json turns
		// each byte that is not into U+FFFD, as a conversion to runes does.
		end := Object(b, i, func(k, v []byte) { got = append(got, member{string([]rune(string(k))), string(v)}) })
		_ = ValueEnd(b, i)
		_ = Array(b, i, func([]byte) {})
		if !json.Valid(b) || i == len(b) || b[i] != '{' {
			return
		}
		if SkipSpace(b, end) != len(b) {
			t.Fatalf("%s: object ends at %d", s, end)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.Token() // {
		var want []member
		for dec.More() {
			k, _ := dec.Token()
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			want = append(want, member{k.(string), string(v)})
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: members %q, encoding/json %q", s, got, want)
		}
	})
}
