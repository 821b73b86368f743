package glob

import (
	"regexp"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"admin_*", "admin_x", true},
		{"admin_*", "admin_x/y", true},
		{"admin_*", "admin_", true},
		{"admin_*", "admin", false},
		{"admin_*", "xadmin_x", false},
		{"*", "", true},
		{"*", "a/b.c*[d]\\é", true},
		{"*_subscribe", "eth_subscribe", true},
		{"*_subscribe", "eth_subscribe/x", false},
		{"a*b*c", "a/b/c", true},
		{"a*b*c", "abcbc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"eth.*", "eth.call", true},
		{"eth.*", "ethXcall", false}, // '.' is itself
		{"m[ab]", "ma", false},       // no classes
		{"m[ab]", "m[ab]", true},
		{"m?", "mx", false}, // no '?'
		{"m?", "m?", true},
		{`a\*`, `a\x`, true}, // no escapes: \ is itself, * is a wildcard
		{`a\*`, `a*`, false},
		{"é*", "éa/ü", true},
		{"**", "x", true},
	} {
		if got := Match(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

// TestMatchAgreesWithRegexp checks Match against a regular expression in
// which * is .* and everything else is quoted.
func TestMatchAgreesWithRegexp(t *testing.T) {
	alphabet := []string{"a", "b", "*", "/", ".", "[", "\\", "é"}
	var words []string
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		words = append(words, prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, n-1)
		}
	}
	gen("", 3)
	for _, p := range words {
		parts := strings.Split(p, "*")
		for i := range parts {
			parts[i] = regexp.QuoteMeta(parts[i])
		}
		re := regexp.MustCompile(`^(?s:` + strings.Join(parts, ".*") + `)$`)
		for _, s := range words {
			if strings.Contains(s, "*") && len(s) > 2 {
				continue
			}
			if got, want := Match(p, s), re.MatchString(s); got != want {
				t.Fatalf("Match(%q, %q) = %v, regexp says %v", p, s, got, want)
			}
		}
	}
}

func TestCapture(t *testing.T) {
	if w, ok := Capture("*_subscribe", "eth_subscribe"); !ok || w != "eth" {
		t.Fatal(w, ok)
	}
	if w, ok := Capture("x", "x"); !ok || w != "" {
		t.Fatal(w, ok)
	}
	if _, ok := Capture("a*a", "a"); ok {
		t.Fatal("a*a matched a")
	}
}
