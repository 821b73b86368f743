// Package defaults fills the zero (or negative) fields of options structs,
// where the zero value means "the default".
package defaults

import "cmp"

// Positive sets *v to def unless *v is positive.
func Positive[T cmp.Ordered](v *T, def T) {
	var zero T
	if *v <= zero {
		*v = def
	}
}
