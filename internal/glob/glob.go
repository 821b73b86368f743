// Package glob is the gateway's one pattern matcher for method names: in a
// pattern, * stands for any run of characters (none, '/', '.', '*' and
// non-ASCII included) and every other character stands for itself. There
// are no character classes and no escapes, so a method name can never
// slip past a pattern through a character that means something else (as
// path.Match's * stops at '/').
package glob

import "strings"

// Match reports whether s matches pattern.
func Match(pattern, s string) bool {
	prefix, rest, star := strings.Cut(pattern, "*")
	if !star {
		return pattern == s
	}
	if !strings.HasPrefix(s, prefix) {
		return false
	}
	s = s[len(prefix):]
	// The last part must end s; the parts between are matched leftmost
	// first, which is enough when * may stand for anything.
	parts := strings.Split(rest, "*")
	last := parts[len(parts)-1]
	for _, p := range parts[:len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

// Capture matches s against a pattern with at most one * and returns what
// the * stood for ("" when the pattern has none).
func Capture(pattern, s string) (wild string, ok bool) {
	prefix, suffix, star := strings.Cut(pattern, "*")
	if !star {
		return "", pattern == s
	}
	if len(s) < len(prefix)+len(suffix) || !strings.HasPrefix(s, prefix) || !strings.HasSuffix(s, suffix) {
		return "", false
	}
	return s[len(prefix) : len(s)-len(suffix)], true
}

// Any reports whether s matches one of patterns.
func Any(patterns []string, s string) bool {
	for _, p := range patterns {
		if Match(p, s) {
			return true
		}
	}
	return false
}
