package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffyaml"
	"go.yaml.in/yaml/v3"
)

// envPrefix starts the environment variable of every flag: --grpc-addr is
// WSBRIDGE_GRPC_ADDR.
const envPrefix = "WSBRIDGE"

// flagSet is a flag.FlagSet whose every flag can also come from an
// environment variable WSBRIDGE_<NAME> (dashes become underscores) and,
// for commands that have --config, from a YAML file whose keys are the flag
// names. github.com/peterbourgon/ff/v3 does the layering: command line,
// then environment, then file, then the default. Every value's error names
// the value and what is expected, and the layer names where it came from.
type flagSet struct {
	*flag.FlagSet
	out    io.Writer
	args   []string // the command line, as parsed
	config string   // --config, when the command has one
}

func newFlagSet(name string, out io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parse reports errors itself, in one line
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, out: out}
}

// withConfig adds --config to the set.
func (f *flagSet) withConfig() {
	f.StringVar(&f.config, "config", "", "YAML file whose keys are these flags' names (flags and the environment take precedence)")
}

// envName returns the environment variable for a flag.
func envName(flag string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parse applies the command line, the environment and the config file. On
// --help it prints the usage; on a bad value it prints one line that says
// which flag, variable or key, the value, and what is expected.
func (f *flagSet) parse(args []string) error {
	f.args = args
	opts := []ff.Option{ff.WithEnvVarPrefix(envPrefix)}
	if f.Lookup("config") != nil {
		opts = append(opts, ff.WithConfigFileFlag("config"), ff.WithConfigFileParser(f.yamlFile))
	}
	err := ff.Parse(f.FlagSet, args, opts...)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.usage()
	case err != nil:
		fmt.Fprintf(f.out, "wsbridge %s: %s\nRun 'wsbridge %s --help' for the flags.\n", f.Name(), tidy(err), f.Name())
	}
	return err
}

// tidy shortens ff's and the flag package's wording of a parse error to
// one line that names the flag as it is written (--name).
func tidy(err error) string {
	msg := err.Error()
	for _, prefix := range []string{"error parsing commandline arguments: ", "error parsing environment variables: ", "error parsing YAML config: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	if _, rest, ok := strings.Cut(msg, " from environment variable "); ok {
		// error setting flag "x" from environment variable "WSBRIDGE_X": why
		name, why, _ := strings.Cut(rest, ": ")
		return strings.Trim(name, `"`) + ": " + why
	}
	if rest, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "no flag --" + rest
	}
	if i := strings.Index(msg, " for flag -"); i >= 0 && strings.HasPrefix(msg, "invalid value ") {
		// invalid value "30" for flag -call-timeout: "30" is not a duration...
		name, why, _ := strings.Cut(msg[i+len(" for flag -"):], ": ")
		return "--" + name + ": " + why
	}
	return strings.ReplaceAll(msg, "error setting flag ", "flag ")
}

// yamlFile reads --config with ffyaml. A key that is not a flag, or a list
// for a flag that takes one value, is an error naming the key.
func (f *flagSet) yamlFile(r io.Reader, set func(name, value string) error) error {
	seen := map[string]bool{}
	return ffyaml.Parser(r, func(name, value string) error {
		if isSectionKey(name) {
			return nil // read by readSections
		}
		fl := f.Lookup(name)
		if fl == nil || name == "config" {
			return fmt.Errorf("unknown key %q in %s (the keys are the flags of `wsbridge %s --help`)", name, f.config, f.Name())
		}
		if _, list := fl.Value.(*listValue); seen[name] && !list {
			return fmt.Errorf("%s in %s: %s takes one value, not a list", name, f.config, name)
		}
		seen[name] = true
		if err := set(name, value); err != nil {
			return fmt.Errorf("%s in %s: %w", name, f.config, errors.Unwrap(err))
		}
		return nil
	})
}

// source says where a flag's value came from, as a user wrote it: --name,
// WSBRIDGE_NAME, or the key in the config file.
func (f *flagSet) source(name string) string {
	for _, a := range f.args {
		if a == "--" {
			break
		}
		n, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && n == name {
			return "--" + name
		}
	}
	if os.Getenv(envName(name)) != "" {
		return envName(name)
	}
	if f.config != "" {
		return name + " in " + f.config
	}
	return "--" + name
}

// badValue is the one line for a value that parsed but makes no sense.
func (f *flagSet) badValue(name string, want string) error {
	return fmt.Errorf("%s %s: %s", f.source(name), f.Lookup(name).Value.String(), want)
}

// unknownEnv returns the WSBRIDGE_* variables that name no flag of the
// command, each with a suggestion when one flag's variable is close.
func (f *flagSet) unknownEnv() []string {
	known := map[string]bool{}
	f.VisitAll(func(fl *flag.Flag) { known[envName(fl.Name)] = true })
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix+"_") || known[name] {
			continue
		}
		msg := name
		best, dist := "", 3
		for k := range known {
			if d := editDistance(name, k); d < dist {
				best, dist = k, d
			}
		}
		if best != "" {
			msg += " (did you mean " + best + "?)"
		}
		out = append(out, msg)
	}
	sort.Strings(out)
	return out
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// effective renders the flags' values as a config file would hold them,
// with redact applied to each value first.
func (f *flagSet) effective(redact func(name string, values []string) []string) ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode}
	f.VisitAll(func(fl *flag.Flag) {
		if fl.Name == "config" || fl.Name == "print-config" {
			return
		}
		key := &yaml.Node{Kind: yaml.ScalarNode, Value: fl.Name}
		var val *yaml.Node
		if l, ok := fl.Value.(*listValue); ok {
			val = &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, v := range redact(fl.Name, l.values) {
				val.Content = append(val.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: v})
			}
		} else {
			val = &yaml.Node{Kind: yaml.ScalarNode, Value: redact(fl.Name, []string{fl.Value.String()})[0]}
		}
		root.Content = append(root.Content, key, val)
	})
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

func (f *flagSet) usage() {
	out := f.out
	fmt.Fprintf(out, "Usage: wsbridge %s [flags]\n\nFlags (each also read from the environment variable shown", f.Name())
	if f.Lookup("config") != nil {
		fmt.Fprint(out, ", and from --config")
	}
	fmt.Fprint(out, "):\n")
	var flags []*flag.Flag
	f.VisitAll(func(fl *flag.Flag) { flags = append(flags, fl) })
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	for _, fl := range flags {
		typ, usage := flag.UnquoteUsage(fl)
		if t, ok := fl.Value.(interface{ typeName() string }); ok {
			typ = t.typeName()
		}
		fmt.Fprintf(out, "  --%s", fl.Name)
		if typ != "" {
			fmt.Fprintf(out, " %s", typ)
		}
		fmt.Fprintf(out, "\n        %s", usage)
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "[]" {
			fmt.Fprintf(out, " (default %s)", fl.DefValue)
		}
		fmt.Fprintf(out, " [$%s]\n", envName(fl.Name))
	}
}

// The flag values: each error names the value and what is expected (the
// flag package would say only "parse error").

// value is a flag of type T: parse reads it (its error says what is
// expected), format writes it.
type value[T any] struct {
	p      *T
	parse  func(string) (T, error)
	format func(T) string
	typ    string
}

func (v *value[T]) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return v.format(*v.p)
}

func (v *value[T]) Set(s string) error {
	x, err := v.parse(s)
	if err != nil {
		return err
	}
	*v.p = x
	return nil
}

func (v *value[T]) typeName() string { return v.typ }

func define[T any](f *flagSet, p *T, name string, def T, usage, typ string, parse func(string) (T, error), format func(T) string) {
	*p = def
	f.Var(&value[T]{p: p, parse: parse, format: format, typ: typ}, name, usage)
}

func (f *flagSet) duration(p *time.Duration, name string, def time.Duration, usage string) {
	define(f, p, name, def, usage, "duration", func(s string) (time.Duration, error) {
		d, err := time.ParseDuration(s)
		if err == nil {
			return d, nil
		}
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return 0, fmt.Errorf("%q has no unit: write a duration such as %ss or %sms", s, s, s)
		}
		return 0, fmt.Errorf("%q is not a duration (write it as 30s, 500ms or 2m)", s)
	}, time.Duration.String)
}

func (f *flagSet) int(p *int, name string, def int, usage string) {
	define(f, p, name, def, usage, "int", func(s string) (int, error) {
		n, err := strconv.ParseInt(s, 0, strconv.IntSize)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", s)
		}
		return int(n), nil
	}, strconv.Itoa)
}

func (f *flagSet) int64(p *int64, name string, def int64, usage string) {
	define(f, p, name, def, usage, "int", func(s string) (int64, error) {
		n, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", s)
		}
		return n, nil
	}, func(n int64) string { return strconv.FormatInt(n, 10) })
}

func (f *flagSet) float(p *float64, name string, def float64, usage string) {
	define(f, p, name, def, usage, "number", func(s string) (float64, error) {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number", s)
		}
		return x, nil
	}, func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) })
}

// boolValue is a value the flag package lets stand alone (--demo).
type boolValue struct{ value[bool] }

func (boolValue) IsBoolFlag() bool { return true }

func (f *flagSet) bool(p *bool, name string, def bool, usage string) {
	*p = def
	f.Var(&boolValue{value[bool]{p: p, format: strconv.FormatBool, parse: func(s string) (bool, error) {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return false, fmt.Errorf("%q is not true or false", s)
		}
		return b, nil
	}}}, name, usage)
}

// listValue is a flag holding several values. Each Set adds the values it
// is given, split at sep (a repeated flag, a YAML list, a comma-separated
// or, for headers, newline-separated environment variable); the first Set
// replaces the default. Only one layer sets a flag (ff gives a flag the
// value of the highest layer that has one).
type listValue struct {
	values []string
	sep    string
	set    bool
}

func (f *flagSet) list(name, sep string, def []string, usage string) *listValue {
	l := &listValue{values: def, sep: sep}
	f.Var(l, name, usage)
	return l
}

func (l *listValue) String() string {
	if l.sep == "" {
		return strings.Join(l.values, " ")
	}
	return strings.Join(l.values, l.sep)
}

// Set adds the values of v: split at sep, or (sep "") at white space.
func (l *listValue) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	items := strings.Fields(v)
	if l.sep != "" {
		items = strings.Split(v, l.sep)
	}
	for _, item := range items {
		if item = strings.TrimSpace(item); item != "" {
			l.values = append(l.values, item)
		}
	}
	return nil
}

func (l *listValue) typeName() string {
	if l.sep == "\n" {
		return "value (repeatable)"
	}
	return "list"
}
