package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run with no environment of the test's own: every WSBRIDGE_* variable is
// cleared for the test (and restored after).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, envPrefix+"_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func TestFlagPrecedence(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("grpc-addr: file:1\ncall-timeout: 7s\nbackend-header: [\"F: 1\"]\nsubscribe-methods: [a_sub, b_sub]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	define := func() (*flagSet, *string, *time.Duration, *listValue, *listValue) {
		fs := newFlagSet("serve", &out)
		addr := fs.String("grpc-addr", "default:1", "")
		var d time.Duration
		fs.duration(&d, "call-timeout", time.Second, "")
		h := fs.list("backend-header", "\n", nil, "")
		l := fs.list("subscribe-methods", ",", []string{"x_sub"}, "")
		fs.withConfig()
		return fs, addr, &d, h, l
	}
	fs, addr, d, h, l := define()
	if err := fs.parse(nil); err != nil || *addr != "default:1" || *d != time.Second || len(h.values) != 0 || strings.Join(l.values, "|") != "x_sub" {
		t.Fatalf("defaults: %v %q %v %v %v", err, *addr, *d, h.values, l.values)
	}
	// The file over the defaults.
	fs, addr, d, h, l = define()
	if err := fs.parse([]string{"--config", file}); err != nil || *addr != "file:1" || *d != 7*time.Second ||
		strings.Join(h.values, "|") != "F: 1" || strings.Join(l.values, "|") != "a_sub|b_sub" {
		t.Fatalf("file: %v %q %v %v %v", err, *addr, *d, h.values, l.values)
	}
	// The environment over the file (WSBRIDGE_CONFIG names it too).
	t.Setenv("WSBRIDGE_CONFIG", file)
	t.Setenv("WSBRIDGE_GRPC_ADDR", "env:2")
	t.Setenv("WSBRIDGE_BACKEND_HEADER", "A: 1\nB: 2")
	fs, addr, d, h, _ = define()
	if err := fs.parse(nil); err != nil || *addr != "env:2" || *d != 7*time.Second || strings.Join(h.values, "|") != "A: 1|B: 2" {
		t.Fatalf("environment: %v %q %v %v", err, *addr, *d, h.values)
	}
	// Flags over everything.
	fs, addr, _, h, _ = define()
	if err := fs.parse([]string{"--grpc-addr", "flag:3", "--backend-header", "C: 3", "--backend-header", "D: 4"}); err != nil ||
		*addr != "flag:3" || strings.Join(h.values, "|") != "C: 3|D: 4" {
		t.Fatalf("flags over environment: %v %q %v", err, *addr, h.values)
	}
	t.Setenv("WSBRIDGE_CALL_TIMEOUT", "soon")
	fs, _, _, _, _ = define()
	if err := fs.parse(nil); err == nil || !strings.Contains(out.String(), `WSBRIDGE_CALL_TIMEOUT: "soon" is not a duration`) {
		t.Fatalf("a bad environment value must name its variable: %v\n%s", err, out.String())
	}
}

func TestConfigFileErrors(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	for content, want := range map[string]string{
		"grpc-adr: x\n":            `unknown key "grpc-adr"`,
		"call-timeout: soon\n":     `call-timeout in ` + dir + `/c.yaml: "soon" is not a duration`,
		"call-timeout: 30\n":       `call-timeout in ` + dir + `/c.yaml: "30" has no unit`,
		"- a\n- b\n":               "yaml",
		"grpc-addr: [a, b]\n":      "grpc-addr takes one value, not a list",
		"backend-header: {a: 1}\n": `unknown key "backend-header.a"`,
		"grpc-addr: x\n  bad: [\n": "yaml",
	} {
		file := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		code := run(context.Background(), []string{"serve", "--config", file, "--print-config"}, &out, &out)
		if code != 2 || !strings.Contains(out.String(), want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", content, code, out.String(), want)
		}
	}
}

// Every value that makes no sense is refused at start with one line that
// names where it came from (flag, variable or key), the value, and what is
// expected; nothing listens.
func TestServeRefusesBadValues(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("max-inflight: -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--max-inflight", "-5"}, nil, "--max-inflight -5: must be at least 1"},
		{[]string{"--call-timeout", "0"}, nil, "--call-timeout 0s: must be a positive duration"},
		{[]string{"--call-timeout", "30"}, nil, `--call-timeout: "30" has no unit: write a duration such as 30s or 30ms`},
		{[]string{"--backoff-jitter", "2"}, nil, "--backoff-jitter 2: must be from 0 (no jitter) to 1"},
		{[]string{"--backoff-max", "1s", "--backoff-base", "2s"}, nil, "--backoff-max 1s: must be at least --backoff-base (2s)"},
		{[]string{"--max-clients", "-1"}, nil, "--max-clients -1: must be 0 (no limit) or more"},
		{[]string{"--client-buffer", "x"}, nil, `--client-buffer: "x" is not a whole number`},
		{nil, map[string]string{"WSBRIDGE_MAX_BATCH": "0"}, "WSBRIDGE_MAX_BATCH 0: must be at least 1"},
		{[]string{"--config", file}, nil, "max-inflight in " + file + " -1: must be at least 1"},
		{[]string{"--log-level", "loud"}, nil, "--log-level loud: must be debug, info, warn or error"},
		{[]string{"--access-log-sample", "0"}, nil, "--access-log-sample 0: must be more than 0 and at most 1"},
		{[]string{"--access-log-level", "loud"}, nil, "--access-log-level loud: must be debug, info, warn or error"},
		{[]string{"--balance", "fastest"}, nil, "--balance fastest: must be priority, round-robin or least-inflight"},
		{[]string{"--hedge-after", "0s"}, nil, "--hedge-after 0s: must be a positive duration"},
		{[]string{"--breaker-failures", "0"}, nil, "--breaker-failures 0: must be at least 1"},
		{[]string{"--max-reply-bytes", "0"}, nil, "--max-reply-bytes 0: must be at least 1"},
		{nil, map[string]string{"WSBRIDGE_MAX_REPLY_BYTES": "-1"}, "WSBRIDGE_MAX_REPLY_BYTES -1: must be at least 1"},
		{[]string{"--admin-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"}, nil, "--admin-addr serves pprof itself; --debug-addr is for a gateway without an admin listener"},
		{[]string{"--backend-idle-timeout", "1m", "--backend-eager"}, nil, "--backend-idle-timeout closes idle backend connections, which --backend-eager redials at once"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			args := append([]string{"serve", "--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tc.args...)
			code := run(context.Background(), args, &stdout, &stderr)
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if code != 2 || !strings.Contains(lines[0], tc.want) || len(lines) > 2 {
				t.Fatalf("exit %d:\n%s\nwant 2 and one line with %q", code, stderr.String(), tc.want)
			}
		})
	}
}

// Without --backend or --demo, serve refuses to start (a misspelt setting
// once served the demo backend, silently), and says how to give one; an
// unknown WSBRIDGE_* variable is named, with the flag it may have meant.
func TestServeNeedsABackend(t *testing.T) {
	clearEnv(t)
	t.Setenv("WSBRIDGE_BAKEND", "ws://127.0.0.1:1/")
	for _, args := range [][]string{{"serve"}, {"serve", "--backend", ""}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "no backend: give its URL with --backend ws://HOST:PORT/PATH") ||
			!strings.Contains(stderr.String(), "--demo") {
			t.Fatalf("%q: exit %d: %s", args, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "WSBRIDGE_BAKEND (did you mean WSBRIDGE_BACKEND?)") {
			t.Fatalf("the misspelt variable is not named: %s", stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--backend", "127.0.0.1:8081"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "--backend: backend URL 127.0.0.1:8081") || !strings.Contains(stderr.String(), "did you mean ws://127.0.0.1:8081/?") {
		t.Fatalf("a URL without a scheme: %d %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"serve", "--demo", "--backend", "ws://x/"}, &stdout, &stderr); code != 2 {
		t.Fatalf("--demo with --backend: %d %s", code, stderr.String())
	}
}

func TestPrintConfigRedactsSecrets(t *testing.T) {
	clearEnv(t)
	t.Setenv("WSBRIDGE_CALL_TIMEOUT", "12s")
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"serve", "--print-config", "--backend", "wss://user:pw@example.com/rpc?key=abc",
		"--backend-header", "Authorization: Bearer s3cret"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	got := out.String()
	for _, secret := range []string{"pw", "abc", "s3cret", "user"} {
		if strings.Contains(got, secret) {
			t.Errorf("--print-config shows %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{"backend: ['wss://REDACTED@example.com/rpc?REDACTED']", "Authorization: REDACTED", "call-timeout: 12s", "grpc-addr: 127.0.0.1:9090"} {
		if !strings.Contains(got, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, got)
		}
	}
}

// The example configs in the repository load, and --print-config's output
// is itself a valid config giving the same configuration.
func TestExampleConfig(t *testing.T) {
	clearEnv(t)
	for file, wants := range map[string][]string{
		"../../examples/wsbridge.yaml": {"backend: ['ws://127.0.0.1:8081/']", "resubscribe: true", "metrics-methods: [eth_call, eth_getBalance]", "log-format: json"},
		"../../examples/backends.yaml": {"url: ws://127.0.0.1:8082/", "priority: 1", "pattern: eth_call", "hedge_after: 50ms", "cache_ttl: 10s"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"serve", "--config", file, "--print-config"}, &out, &errOut); code != 0 {
			t.Fatalf("%s: exit %d: %s", file, code, errOut.String())
		}
		for _, want := range wants {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: effective config lacks %q:\n%s", file, want, out.String())
			}
		}
		again := filepath.Join(t.TempDir(), "again.yaml")
		if err := os.WriteFile(again, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		var out2 bytes.Buffer
		if code := run(context.Background(), []string{"serve", "--config", again, "--print-config"}, &out2, &errOut); code != 0 || out2.String() != out.String() {
			t.Fatalf("%s: round trip: exit %d %s\n%s\nvs\n%s", file, code, errOut.String(), out2.String(), out.String())
		}
		// It also passes every check serve makes before it starts.
		fs := newFlagSet("serve", &errOut)
		var sf serveFlags
		sf.register(fs)
		if code, ok := parseArgs(fs, []string{"--config", file}); !ok {
			t.Fatalf("%s: parse: %d %s", file, code, errOut.String())
		}
		if _, err := sf.options(fs, slog.New(slog.DiscardHandler)); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}

func TestServeHelpListsEveryFlagWithItsVariable(t *testing.T) {
	clearEnv(t)
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &stderr, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := stderr.String()
	for _, name := range []string{"backend", "demo", "grpc-addr", "http-addr", "backend-eager", "backend-conns", "backend-header",
		"backoff-base", "backoff-multiplier", "backoff-jitter", "backoff-max", "backend-ping-interval", "backend-ping-timeout",
		"call-timeout", "max-inflight", "max-message-bytes", "max-reply-bytes", "max-batch", "shutdown-grace", "log-format", "log-level"} {
		if !strings.Contains(help, "--"+name+" ") && !strings.Contains(help, "--"+name+"\n") {
			t.Errorf("help lacks --%s", name)
		}
		if !strings.Contains(help, "[$"+envName(name)+"]") {
			t.Errorf("help lacks $%s", envName(name))
		}
	}
	if !strings.Contains(help, "(default 127.0.0.1:9090)") || !strings.Contains(help, "(default 30s)") {
		t.Errorf("help lacks defaults:\n%s", help)
	}
}

func TestUsageErrors(t *testing.T) {
	clearEnv(t)
	for _, args := range [][]string{nil, {"bogus"}, {"serve", "--no-such-flag"}, {"serve", "--demo", "extra"}, {"serve", "--demo", "--log-format", "xml"},
		{"serve", "--demo", "--backend-header", "no colon"}} {
		var out bytes.Buffer
		if code := run(context.Background(), args, &out, &out); code != 2 {
			t.Errorf("%q: exit %d, want 2 (output %q)", args, code, out.String())
		}
		if strings.Count(out.String(), "\n") > 15 && len(args) > 1 {
			t.Errorf("%q: a usage error printed the whole help:\n%s", args, out.String())
		}
	}
}

func TestParseHeaders(t *testing.T) {
	h, err := parseHeaders([]string{"Authorization: Bearer x:y", "X-A:1", "X-A: 2"})
	if err != nil || h.Get("Authorization") != "Bearer x:y" || len(h.Values("X-A")) != 2 {
		t.Fatalf("%v %v", h, err)
	}
	for _, bad := range []string{"novalue", ": v", "Bad Name: v"} {
		if _, err := parseHeaders([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The README's flag table must name every flag of `wsbridge serve`.
func TestREADMEListsEveryServeFlag(t *testing.T) {
	clearEnv(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	run(context.Background(), []string{"serve", "--help"}, &out, &out)
	for _, line := range strings.Split(out.String(), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "--"); ok {
			name = strings.Fields(name)[0]
			if !strings.Contains(string(readme), "| `--"+name+"` |") {
				t.Errorf("README.md's flag table lacks --%s", name)
			}
		}
	}
}

func TestRedactArgs(t *testing.T) {
	got := strings.Join(redactArgs([]string{"wsbridge", "serve", "--backend", "wss://u:p@h:1/v3/KEY?k=Q", "-backend-header=Authorization: Bearer S",
		"--backend-header", "X-Api-Key: K2", "--backend=ws://h/KEY3", "--grpc-addr", "1.2.3.4:5"}), " ")
	for _, secret := range []string{"KEY", "Q", "Bearer S", "K2", "KEY3", "u:p"} {
		if strings.Contains(got, secret) {
			t.Errorf("%q shows %q", got, secret)
		}
	}
	if !strings.Contains(got, "wss://h:1/REDACTED") || !strings.Contains(got, "X-Api-Key: REDACTED") || !strings.Contains(got, "--grpc-addr 1.2.3.4:5") {
		t.Errorf("redacted too much or wrongly: %q", got)
	}
}

// --max-reply-bytes comes from the flag, the environment or the config
// file like any flag, apart from --max-message-bytes, and --print-config
// shows it.
func TestMaxReplyBytes(t *testing.T) {
	clearEnv(t)
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("max-reply-bytes: 3000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  string
		want int64
	}{
		{nil, "", 32 << 20},
		{[]string{"--max-reply-bytes", "1000000"}, "", 1000000},
		{nil, "2000000", 2000000},
		{[]string{"--config", file}, "", 3000000},
	} {
		if tc.env != "" {
			t.Setenv("WSBRIDGE_MAX_REPLY_BYTES", tc.env)
		}
		var errOut bytes.Buffer
		fs := newFlagSet("serve", &errOut)
		var sf serveFlags
		sf.register(fs)
		if code, ok := parseArgs(fs, append([]string{"--demo", "--max-message-bytes", "1024"}, tc.args...)); !ok {
			t.Fatalf("%v: parse: %d %s", tc.args, code, errOut.String())
		}
		opts, err := sf.options(fs, slog.New(slog.DiscardHandler))
		if err != nil || opts.Bridge.MaxReplyBytes != tc.want || opts.Bridge.MaxMessageBytes != 1024 {
			t.Errorf("%v %s: reply limit %d, message limit %d, %v; want %d and 1024", tc.args, tc.env, opts.Bridge.MaxReplyBytes, opts.Bridge.MaxMessageBytes, err, tc.want)
		}
		var out bytes.Buffer
		if code := run(context.Background(), append([]string{"serve", "--demo", "--print-config"}, tc.args...), &out, &errOut); code != 0 ||
			!strings.Contains(out.String(), fmt.Sprintf("max-reply-bytes: %d\n", tc.want)) {
			t.Errorf("%v %s: --print-config exit %d:\n%s", tc.args, tc.env, code, out.String())
		}
		os.Unsetenv("WSBRIDGE_MAX_REPLY_BYTES")
	}
}

// The backends: and methods: sections load, show redacted in
// --print-config, and the printed config loads to the same configuration.
func TestConfigSections(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	cfg := "backends:\n  - url: wss://user:pw@a.example/rpc?key=abc\n    priority: 1\n    headers: [\"Authorization: Bearer s3cret\"]\n  - url: ws://b.example/\n    weight: 3\n" +
		"methods:\n  - pattern: eth_get*\n    retry: true\n    hedge_after: 20ms\n"
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--config", file, "--print-config"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	got := out.String()
	for _, secret := range []string{"pw", "abc", "s3cret", "user"} {
		if strings.Contains(got, secret) {
			t.Errorf("--print-config shows %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{"url: wss://REDACTED@a.example/rpc?REDACTED", "weight: 3", "pattern: eth_get*", "hedge_after: 20ms", "Authorization: REDACTED"} {
		if !strings.Contains(got, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, got)
		}
	}

	// The options the sections become.
	fs := newFlagSet("serve", &errOut)
	var sf serveFlags
	sf.register(fs)
	if code, ok := parseArgs(fs, []string{"--config", file}); !ok {
		t.Fatalf("parse: %d %s", code, errOut.String())
	}
	opts, err := sf.options(fs, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	bes := opts.Bridge.Backends
	if len(bes) != 2 || bes[0].Priority != 1 || bes[1].Weight != 3 || bes[0].Header.Get("Authorization") != "Bearer s3cret" {
		t.Errorf("backends: %+v", bes)
	}
	if m := opts.Bridge.Methods; len(m) != 1 || !m[0].Retry || m[0].HedgeAfter != 20*time.Millisecond {
		t.Errorf("methods: %+v", m)
	}
}

// A bad entry in a section is refused naming the entry and the key.
func TestConfigSectionsRefused(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct{ cfg, want string }{
		{"backends:\n  - url: ws://a/\n    wieght: 2\n", "field wieght not found"},
		{"backends:\n  - url: http://a/\n", "backends[0]"},
		{"backends:\n  - url: ws://a/\n    weight: -1\n", "weight -1"},
		{"backend: ws://b/\nbackends:\n  - url: ws://a/\n", "both backend: and backends:"},
		{"backend: ws://a/\nmethods:\n  - retry: true\n", "methods[0]"},
		{"backend: ws://a/\nmethods:\n  - pattern: x\n    cache_ttl: -1s\n", "negative"},
	} {
		file := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(file, []byte(tc.cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"serve", "--config", file}, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", tc.cfg, code, errOut.String(), tc.want)
		}
	}
}
