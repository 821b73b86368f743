package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// flagSet is a flag.FlagSet whose every flag can also come from an
// environment variable WSBRIDGE_<NAME> (dashes become underscores) and from
// a YAML config file (--config, or WSBRIDGE_CONFIG) whose keys are the flag
// names. Precedence: command line, then environment, then the file, then
// the default.
type flagSet struct {
	*flag.FlagSet
	getenv func(string) string
	config string // the --config flag, when the command has one
}

func newFlagSet(name string, out io.Writer, getenv func(string) string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	f := &flagSet{FlagSet: fs, getenv: getenv}
	fs.Usage = f.usage
	return f
}

// withConfig adds --config to the set.
func (f *flagSet) withConfig() {
	f.StringVar(&f.config, "config", "", "YAML file whose keys are these flags' names (flags and the environment take precedence)")
}

// envName returns the environment variable for a flag.
func envName(flag string) string {
	return "WSBRIDGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// layered is a flag holding several values (repeated, commaList): a layer
// with a higher precedence replaces the values of lower ones instead of
// adding to them.
type layered interface {
	flag.Value
	// nextLayer makes the next Set replace what is held.
	nextLayer()
	set(values []string)
}

// parse applies the config file, the environment, then the command line.
func (f *flagSet) parse(args []string) error {
	err := f.parseLayers(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(f.Output(), err)
	}
	return err
}

func (f *flagSet) parseLayers(args []string) error {
	if f.Lookup("config") != nil {
		path := configArg(args)
		if path == "" {
			path = f.getenv(envName("config"))
		}
		if path != "" {
			if err := f.applyFile(path); err != nil {
				return err
			}
		}
	}
	var err error
	f.VisitAll(func(fl *flag.Flag) {
		v := f.getenv(envName(fl.Name))
		if err != nil || v == "" || fl.Name == "config" {
			return
		}
		if l, ok := fl.Value.(layered); ok {
			l.nextLayer()
		}
		if serr := fl.Value.Set(v); serr != nil {
			err = fmt.Errorf("invalid value %q for %s: %v", v, envName(fl.Name), serr)
		}
	})
	if err != nil {
		return err
	}
	f.VisitAll(func(fl *flag.Flag) {
		if l, ok := fl.Value.(layered); ok {
			l.nextLayer()
		}
	})
	return f.Parse(args)
}

// configArg finds --config in args before they are parsed.
func configArg(args []string) string {
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// applyFile sets flags from a YAML file: a mapping of flag names to values
// (a list for flags that take several). An unknown key is an error.
func (f *flagSet) applyFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: the top level must be a mapping of flag names to values", path)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		key, val := m.Content[i], m.Content[i+1]
		fl := f.Lookup(key.Value)
		if fl == nil || key.Value == "config" {
			return fmt.Errorf("config %s:%d: unknown key %q (keys are the flags of `wsbridge %s --help`)", path, key.Line, key.Value, f.Name())
		}
		var values []string
		switch val.Kind {
		case yaml.ScalarNode:
			values = []string{val.Value}
		case yaml.SequenceNode:
			for _, e := range val.Content {
				if e.Kind != yaml.ScalarNode {
					return fmt.Errorf("config %s:%d: %s: list elements must be plain values", path, e.Line, key.Value)
				}
				values = append(values, e.Value)
			}
		default:
			return fmt.Errorf("config %s:%d: %s: a value or a list of values", path, val.Line, key.Value)
		}
		if l, ok := fl.Value.(layered); ok {
			l.set(values)
			continue
		}
		if len(values) != 1 {
			return fmt.Errorf("config %s:%d: %s takes one value", path, val.Line, key.Value)
		}
		if err := fl.Value.Set(values[0]); err != nil {
			return fmt.Errorf("config %s:%d: invalid value %q for %s: %v", path, val.Line, values[0], key.Value, err)
		}
	}
	return nil
}

// effective renders the flags' values as a config file would hold them,
// with redact applied to each value first.
func (f *flagSet) effective(redact func(name string, values []string) []string) ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode}
	f.VisitAll(func(fl *flag.Flag) {
		if fl.Name == "config" || fl.Name == "print-config" {
			return
		}
		var values []string
		multi := false
		if l, ok := fl.Value.(layered); ok {
			multi = true
			if s := l.String(); s != "" {
				values = strings.Split(s, listSep(l))
			}
		} else {
			values = []string{fl.Value.String()}
		}
		values = redact(fl.Name, values)
		key := &yaml.Node{Kind: yaml.ScalarNode, Value: fl.Name}
		var val *yaml.Node
		if multi {
			val = &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, v := range values {
				val.Content = append(val.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: v})
			}
		} else {
			val = &yaml.Node{Kind: yaml.ScalarNode, Value: values[0]}
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

func listSep(l layered) string {
	if _, ok := l.(*repeated); ok {
		return "\n"
	}
	return ","
}

func (f *flagSet) usage() {
	out := f.Output()
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

// repeated is a flag that may be given several times. From the
// environment, values are separated by newlines.
type repeated struct {
	values []string
	fresh  bool // the next Set starts a new layer
}

func (r *repeated) String() string { return strings.Join(r.values, "\n") }

func (r *repeated) Set(v string) error {
	if r.fresh {
		r.values, r.fresh = nil, false
	}
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			r.values = append(r.values, line)
		}
	}
	return nil
}

func (r *repeated) nextLayer()          { r.fresh = true }
func (r *repeated) set(values []string) { r.values, r.fresh = append([]string(nil), values...), false }

// commaList is a flag holding a comma-separated list; an empty value is an
// empty list. Each Set replaces the list.
type commaList []string

func (l *commaList) String() string { return strings.Join(*l, ",") }

func (l *commaList) Set(v string) error {
	*l = commaList{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

func (l *commaList) nextLayer()          {}
func (l *commaList) set(values []string) { *l = append(commaList{}, values...) }
