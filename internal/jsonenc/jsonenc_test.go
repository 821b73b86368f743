package jsonenc

import (
	"encoding/json"
	"testing"
)

// FuzzJSONString checks the request encoder's string escaping against
// encoding/json.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"echo", "", "a\"b\\c", "\x00\x1f\n\t", "\xff", "héllo\u2028", "<>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendString(nil, s)
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q -> %s is not a JSON string: %v", s, out, err)
		}
		ref, _ := json.Marshal(s)
		var want string
		_ = json.Unmarshal(ref, &want)
		if got != want {
			t.Fatalf("%q decodes to %q, encoding/json gives %q", s, got, want)
		}
	})
}
