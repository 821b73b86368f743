package main

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// flagSet is a flag.FlagSet whose every flag can also come from an
// environment variable WSBRIDGE_<NAME> (dashes become underscores).
// Precedence: command line, then environment, then the default.
type flagSet struct {
	*flag.FlagSet
	getenv func(string) string
}

func newFlagSet(name string, out io.Writer, getenv func(string) string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	f := &flagSet{FlagSet: fs, getenv: getenv}
	fs.Usage = f.usage
	return f
}

// envName returns the environment variable for a flag.
func envName(flag string) string {
	return "WSBRIDGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parse applies the environment, then the command line.
func (f *flagSet) parse(args []string) error {
	var err error
	f.VisitAll(func(fl *flag.Flag) {
		if err != nil {
			return
		}
		if v := f.getenv(envName(fl.Name)); v != "" {
			if serr := fl.Value.Set(v); serr != nil {
				err = fmt.Errorf("invalid value %q for %s: %v", v, envName(fl.Name), serr)
			}
			if r, ok := fl.Value.(*repeated); ok {
				r.fromEnv = true
			}
		}
	})
	if err != nil {
		fmt.Fprintln(f.Output(), err)
		return err
	}
	return f.Parse(args)
}

func (f *flagSet) usage() {
	out := f.Output()
	fmt.Fprintf(out, "Usage: wsbridge %s [flags]\n\nFlags (each also read from the environment variable shown):\n", f.Name())
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
// environment, values are separated by newlines; any command-line value
// replaces the environment's.
type repeated struct {
	values  []string
	fromEnv bool
}

func (r *repeated) String() string { return strings.Join(r.values, ", ") }

func (r *repeated) Set(v string) error {
	if r.fromEnv {
		r.values, r.fromEnv = nil, false
	}
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			r.values = append(r.values, line)
		}
	}
	return nil
}

// commaList is a flag holding a comma-separated list; an empty value is an
// empty list.
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
