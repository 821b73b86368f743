// Package statsdecl reads the gateway's stats from their one declaration:
// each field of wsbridge.v1.Stats carries a (wsbridge.v1.stat) option with
// its kind, help, section, seed name and metric name. From it this package
// renders a snapshot as the seed proxy's /__stats JSON, as Prometheus
// metrics, as the `wsbridge stats` table, and describes the fields for the
// dashboard. Adding a counter is a field in stats.proto and the line that
// fills it in the snapshot: every output follows.
package statsdecl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Field is one declared stat.
type Field struct {
	Desc protoreflect.FieldDescriptor
	Opts *wsbridgev1.StatOptions
	// JSON is the field's protojson name (GetStats over REST).
	JSON string
	// Seed is its /__stats name: the seed's own when it had the field.
	Seed string
	// Metric is the Prometheus name ("" for STAT_KIND_INFO).
	Metric string
	// Title is the name people read: the field name with spaces.
	Title string
	// Rows, for a repeated message whose fields are declared too (the
	// backends), are those fields: each element is a row, and its metrics
	// carry the element's first field (its name) as the label Opts.Label.
	Rows []Field
}

// Fields lists the declared stats in declaration order.
var Fields = declare((&wsbridgev1.Stats{}).ProtoReflect().Descriptor(), "wsbridge_")

func declare(md protoreflect.MessageDescriptor, prefix string) []Field {
	fds := md.Fields()
	out := make([]Field, 0, fds.Len())
	for i := range fds.Len() {
		fd := fds.Get(i)
		opts, _ := proto.GetExtension(fd.Options(), wsbridgev1.E_Stat).(*wsbridgev1.StatOptions)
		if opts == nil || opts.GetKind() == wsbridgev1.StatKind_STAT_KIND_UNSPECIFIED {
			panic(fmt.Sprintf("%s.%s has no (wsbridge.v1.stat) kind", md.FullName(), fd.Name()))
		}
		f := Field{Desc: fd, Opts: opts, JSON: fd.JSONName(), Seed: opts.GetSeed(),
			Title: strings.ReplaceAll(strings.TrimSuffix(string(fd.Name()), "_ms"), "_", " ")}
		if f.Seed == "" {
			f.Seed = f.JSON
		}
		if opts.GetKind() != wsbridgev1.StatKind_STAT_KIND_INFO {
			f.Metric = prefix + string(fd.Name())
			if m := opts.GetMetric(); m != "" {
				f.Metric = prefix + m
			}
			if opts.GetKind() == wsbridgev1.StatKind_STAT_KIND_COUNTER {
				f.Metric += "_total"
			}
		}
		if fd.IsList() && fd.Kind() == protoreflect.MessageKind && opts.GetLabel() != "" {
			f.Rows = declare(fd.Message(), prefix+opts.GetMetric()+"_")
		}
		out = append(out, f)
	}
	return out
}

// rowName is the name of one row of a Rows field: its first field.
func rowName(row protoreflect.Message) string {
	return row.Get(row.Descriptor().Fields().Get(0)).String()
}

// enumName is an enum value as people read it: BACKEND_STATE_CONNECTED is
// "connected".
func enumName(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	v := ed.Values().ByNumber(n)
	if v == nil {
		return strconv.Itoa(int(n))
	}
	prefix := strings.ToUpper(toSnake(string(ed.Name()))) + "_"
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix))
}

// toSnake turns BackendState into backend_state.
func toSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

var timestampName = (&timestamppb.Timestamp{}).ProtoReflect().Descriptor().FullName()

// Seed renders st as GET /__stats: the seed proxy's fields first, under its
// names and in its JSON shape (plain numbers, startedAt in ms since the
// epoch), then wsbridge's own.
func Seed(st *wsbridgev1.Stats) []byte {
	m := st.ProtoReflect()
	var b bytes.Buffer
	b.WriteString("{")
	n := 0
	write := func(f Field) {
		if n > 0 {
			b.WriteString(",")
		}
		n++
		b.WriteString("\n  ")
		b.Write(jsonrpc.AppendString(nil, f.Seed))
		b.WriteString(": ")
		appendValue(&b, f.Desc, m.Get(f.Desc), "  ")
	}
	for _, f := range Fields {
		if f.Opts.GetSeed() != "" {
			write(f)
		}
	}
	for _, f := range Fields {
		if f.Opts.GetSeed() == "" {
			write(f)
		}
	}
	b.WriteString("\n}\n")
	return b.Bytes()
}

// appendValue writes one field's value as plain JSON.
func appendValue(b *bytes.Buffer, fd protoreflect.FieldDescriptor, v protoreflect.Value, indent string) {
	switch {
	case fd.IsList():
		l := v.List()
		b.WriteString("[")
		for i := range l.Len() {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + indent + "  ")
			appendElement(b, fd, l.Get(i), indent+"  ")
		}
		if l.Len() > 0 {
			b.WriteString("\n" + indent)
		}
		b.WriteString("]")
	case fd.IsMap():
		keys := []string{}
		v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k.String())
			return true
		})
		slices.Sort(keys)
		b.WriteString("{")
		for i, k := range keys {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + indent + "  ")
			b.Write(jsonrpc.AppendString(nil, k))
			b.WriteString(": ")
			appendValue(b, fd.MapValue(), v.Map().Get(protoreflect.ValueOfString(k).MapKey()), indent+"  ")
		}
		if len(keys) > 0 {
			b.WriteString("\n" + indent)
		}
		b.WriteString("}")
	default:
		appendElement(b, fd, v, indent)
	}
}

// appendElement writes one value of fd (one element, for a list) as plain
// JSON.
func appendElement(b *bytes.Buffer, fd protoreflect.FieldDescriptor, v protoreflect.Value, indent string) {
	switch {
	case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == timestampName:
		ts := v.Message().Interface().(*timestamppb.Timestamp)
		if ts.GetSeconds() == 0 && ts.GetNanos() == 0 {
			b.WriteString("0")
			return
		}
		b.WriteString(strconv.FormatInt(ts.AsTime().UnixMilli(), 10))
	case fd.Kind() == protoreflect.MessageKind:
		msg := v.Message()
		fields := fd.Message().Fields()
		b.WriteString("{")
		for i := range fields.Len() {
			sub := fields.Get(i)
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + indent + "  ")
			b.Write(jsonrpc.AppendString(nil, sub.JSONName()))
			b.WriteString(": ")
			appendValue(b, sub, msg.Get(sub), indent+"  ")
		}
		b.WriteString("\n" + indent + "}")
	case fd.Kind() == protoreflect.EnumKind:
		b.Write(jsonrpc.AppendString(nil, enumName(fd.Enum(), v.Enum())))
	case fd.Kind() == protoreflect.StringKind:
		b.Write(jsonrpc.AppendString(nil, v.String()))
	case fd.Kind() == protoreflect.BoolKind:
		b.WriteString(strconv.FormatBool(v.Bool()))
	case fd.Kind() == protoreflect.DoubleKind || fd.Kind() == protoreflect.FloatKind:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			f = 0
		}
		out, _ := json.Marshal(f)
		b.Write(out)
	default:
		b.WriteString(scalarString(fd, v))
	}
}

func scalarString(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return strconv.FormatUint(v.Uint(), 10)
	case protoreflect.Int32Kind, protoreflect.Int64Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind,
		protoreflect.Sfixed32Kind, protoreflect.Sfixed64Kind:
		return strconv.FormatInt(v.Int(), 10)
	}
	return v.String()
}

// number returns a scalar, bool or timestamp field as a float (times the
// declared scale).
func number(f Field, v protoreflect.Value) float64 {
	var x float64
	switch fd := f.Desc; fd.Kind() {
	case protoreflect.BoolKind:
		if v.Bool() {
			x = 1
		}
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		x = v.Float()
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		x = float64(v.Uint())
	case protoreflect.MessageKind:
		if ts, ok := v.Message().Interface().(*timestamppb.Timestamp); ok && ts.IsValid() {
			x = float64(ts.AsTime().UnixNano()) / 1e9
		}
	default:
		x = float64(v.Int())
	}
	if s := f.Opts.GetScale(); s != 0 {
		x *= s
	}
	return x
}

// Collector exports every field with a metric from the snapshots of get,
// taken at scrape time (so /metrics, GetStats and /__stats never
// disagree).
func Collector(get func() *wsbridgev1.Stats) prometheus.Collector {
	c := &collector{get: get, descs: map[*Field]*prometheus.Desc{}}
	c.describe(Fields, nil)
	return c
}

// describe makes the descriptors of fields, whose metrics carry rowLabels
// first (the row's name, for Rows).
func (c *collector) describe(fields []Field, rowLabels []string) {
	for i := range fields {
		f := &fields[i]
		if f.Rows != nil {
			c.describe(f.Rows, append(append([]string(nil), rowLabels...), f.Opts.GetLabel()))
			continue
		}
		if f.Metric == "" {
			continue
		}
		labels := append([]string(nil), rowLabels...)
		if l := f.Opts.GetLabel(); l != "" {
			labels = append(labels, l)
		}
		c.descs[f] = prometheus.NewDesc(f.Metric, f.Opts.GetHelp(), labels, nil)
	}
}

type collector struct {
	get   func() *wsbridgev1.Stats
	descs map[*Field]*prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.collect(ch, Fields, c.get().ProtoReflect(), nil)
}

// collect sends the metrics of m's fields, with rowValues as the first
// label values.
func (c *collector) collect(ch chan<- prometheus.Metric, fields []Field, m protoreflect.Message, rowValues []string) {
	for i := range fields {
		f := &fields[i]
		v := m.Get(f.Desc)
		if f.Rows != nil {
			l := v.List()
			for j := range l.Len() {
				row := l.Get(j).Message()
				c.collect(ch, f.Rows, row, append(append([]string(nil), rowValues...), rowName(row)))
			}
			continue
		}
		desc := c.descs[f]
		if desc == nil {
			continue
		}
		typ := prometheus.GaugeValue
		if f.Opts.GetKind() == wsbridgev1.StatKind_STAT_KIND_COUNTER {
			typ = prometheus.CounterValue
		}
		switch {
		case f.Desc.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				ch <- prometheus.MustNewConstMetric(desc, typ, float64(mv.Uint()), append(rowValues, k.String())...)
				return true
			})
		case f.Desc.Kind() == protoreflect.EnumKind:
			values := f.Desc.Enum().Values()
			for i := range values.Len() {
				ev := values.Get(i)
				if ev.Number() == 0 {
					continue // UNSPECIFIED
				}
				x := 0.0
				if ev.Number() == v.Enum() {
					x = 1
				}
				ch <- prometheus.MustNewConstMetric(desc, typ, x, append(rowValues, enumName(f.Desc.Enum(), ev.Number()))...)
			}
		default:
			ch <- prometheus.MustNewConstMetric(desc, typ, number(*f, v), rowValues...)
		}
	}
}

var sectionOrder = []wsbridgev1.StatSection{
	wsbridgev1.StatSection_STAT_SECTION_GATEWAY, wsbridgev1.StatSection_STAT_SECTION_BACKEND,
	wsbridgev1.StatSection_STAT_SECTION_REQUESTS, wsbridgev1.StatSection_STAT_SECTION_ERRORS,
	wsbridgev1.StatSection_STAT_SECTION_CLIENTS, wsbridgev1.StatSection_STAT_SECTION_NOTIFICATIONS,
}

// SectionName is a section as people read it.
func SectionName(s wsbridgev1.StatSection) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STAT_SECTION_"))
}

// Table writes st for people: every field, by section, one per line.
func Table(w io.Writer, st *wsbridgev1.Stats) error {
	m := st.ProtoReflect()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, sec := range sectionOrder {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		fmt.Fprintf(tw, "%s\n", strings.ToUpper(SectionName(sec)))
		for _, f := range Fields {
			if f.Opts.GetSection() != sec {
				continue
			}
			if f.Rows == nil {
				fmt.Fprintf(tw, "  %s\t%s\n", f.Title, Text(f, m.Get(f.Desc)))
				continue
			}
			l := m.Get(f.Desc).List()
			for j := range l.Len() {
				row := l.Get(j).Message()
				fmt.Fprintf(tw, "  %s %s\n", f.Opts.GetLabel(), rowName(row))
				for _, rf := range f.Rows[1:] {
					fmt.Fprintf(tw, "    %s\t%s\n", rf.Title, Text(rf, row.Get(rf.Desc)))
				}
			}
		}
	}
	return tw.Flush()
}

// Text renders one field's value for people.
func Text(f Field, v protoreflect.Value) string {
	fd := f.Desc
	switch {
	case fd.IsList():
		return fmt.Sprintf("%d", v.List().Len())
	case fd.IsMap():
		var parts []string
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			if mv.Uint() != 0 {
				parts = append(parts, fmt.Sprintf("%s %d", k.String(), mv.Uint()))
			}
			return true
		})
		if len(parts) == 0 {
			return "none"
		}
		slices.Sort(parts)
		return strings.Join(parts, ", ")
	case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == timestampName:
		ts := v.Message().Interface().(*timestamppb.Timestamp)
		if ts.GetSeconds() == 0 && ts.GetNanos() == 0 {
			return "-"
		}
		return ts.AsTime().Local().Format(time.RFC3339)
	case fd.Kind() == protoreflect.MessageKind:
		if lat, ok := v.Message().Interface().(*wsbridgev1.Latency); ok {
			return fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms (%d calls, last %ds)",
				lat.GetP50Ms(), lat.GetP90Ms(), lat.GetP99Ms(), lat.GetCount(), lat.GetWindowSeconds())
		}
		var b bytes.Buffer
		appendValue(&b, fd, v, "")
		return b.String()
	case fd.Kind() == protoreflect.EnumKind:
		return enumName(fd.Enum(), v.Enum())
	case fd.Kind() == protoreflect.StringKind:
		if v.String() == "" {
			return "-"
		}
		return v.String()
	case fd.Kind() == protoreflect.BoolKind:
		if v.Bool() {
			return "yes"
		}
		return "no"
	case fd.Kind() == protoreflect.DoubleKind:
		return strconv.FormatFloat(v.Float(), 'f', 1, 64)
	case strings.HasSuffix(string(fd.Name()), "_ms"):
		return (time.Duration(v.Uint()) * time.Millisecond).Round(time.Second).String()
	}
	return scalarString(fd, v)
}

// SchemaField describes one field for the dashboard.
type SchemaField struct {
	JSON    string `json:"json"`
	Title   string `json:"title"`
	Help    string `json:"help"`
	Kind    string `json:"kind"`
	Section string `json:"section"`
	// Rows are the fields of each row (backends), the first naming it.
	Rows []SchemaField `json:"rows,omitempty"`
}

func schemaField(f Field) SchemaField {
	sf := SchemaField{JSON: f.JSON, Title: f.Title, Help: f.Opts.GetHelp(),
		Kind: strings.ToLower(strings.TrimPrefix(f.Opts.GetKind().String(), "STAT_KIND_")), Section: SectionName(f.Opts.GetSection())}
	for _, r := range f.Rows {
		sf.Rows = append(sf.Rows, schemaField(r))
	}
	return sf
}

// Schema is the declaration as JSON, for the dashboard's table of every
// field.
func Schema() []byte {
	out := make([]SchemaField, 0, len(Fields))
	for _, sec := range sectionOrder {
		for _, f := range Fields {
			if f.Opts.GetSection() != sec {
				continue
			}
			out = append(out, schemaField(f))
		}
	}
	b, _ := json.Marshal(out)
	return b
}
