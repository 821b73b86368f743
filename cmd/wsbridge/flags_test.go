package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("grpc-addr: file:1\ncall-timeout: 7s\nbackend-header: [\"F: 1\"]\nsubscribe-methods: [a_sub, b_sub]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	define := func(getenv func(string) string) (*flagSet, *string, *time.Duration, *repeated, *commaList) {
		fs := newFlagSet("serve", &out, getenv)
		addr := fs.String("grpc-addr", "default:1", "")
		d := fs.Duration("call-timeout", time.Second, "")
		var h repeated
		fs.Var(&h, "backend-header", "")
		var l commaList
		fs.Var(&l, "subscribe-methods", "")
		fs.withConfig()
		return fs, addr, d, &h, &l
	}
	fs, addr, d, h, l := define(env(nil))
	if err := fs.parse(nil); err != nil || *addr != "default:1" || *d != time.Second || len(h.values) != 0 || len(*l) != 0 {
		t.Fatalf("defaults: %v %q %v %v %v", err, *addr, *d, h.values, *l)
	}
	// The file over the defaults.
	fs, addr, d, h, l = define(env(nil))
	if err := fs.parse([]string{"--config", file}); err != nil || *addr != "file:1" || *d != 7*time.Second ||
		strings.Join(h.values, "|") != "F: 1" || strings.Join(*l, "|") != "a_sub|b_sub" {
		t.Fatalf("file: %v %q %v %v %v", err, *addr, *d, h.values, *l)
	}
	// The environment over the file (WSBRIDGE_CONFIG names it too).
	e := env(map[string]string{"WSBRIDGE_CONFIG": file, "WSBRIDGE_GRPC_ADDR": "env:2", "WSBRIDGE_BACKEND_HEADER": "A: 1\nB: 2"})
	fs, addr, d, h, _ = define(e)
	if err := fs.parse(nil); err != nil || *addr != "env:2" || *d != 7*time.Second || strings.Join(h.values, "|") != "A: 1|B: 2" {
		t.Fatalf("environment: %v %q %v %v", err, *addr, *d, h.values)
	}
	// Flags over everything.
	fs, addr, _, h, _ = define(e)
	if err := fs.parse([]string{"--grpc-addr", "flag:3", "--backend-header", "C: 3", "--backend-header", "D: 4"}); err != nil ||
		*addr != "flag:3" || strings.Join(h.values, "|") != "C: 3|D: 4" {
		t.Fatalf("flags over environment: %v %q %v", err, *addr, h.values)
	}
	fs, _, _, _, _ = define(env(map[string]string{"WSBRIDGE_CALL_TIMEOUT": "soon"}))
	if err := fs.parse(nil); err == nil || !strings.Contains(err.Error(), "WSBRIDGE_CALL_TIMEOUT") {
		t.Fatalf("a bad environment value must name its variable: %v", err)
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"grpc-adr: x\n":            `unknown key "grpc-adr"`,
		"call-timeout: soon\n":     `invalid value "soon" for call-timeout`,
		"- a\n- b\n":               "mapping",
		"grpc-addr: [a, b]\n":      "takes one value",
		"backend-header: {a: 1}\n": "value or a list",
		"grpc-addr: x\n  bad: [\n": "yaml",
	} {
		file := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		code := run(context.Background(), []string{"serve", "--config", file, "--print-config"}, &out, &out, env(nil))
		if code != 2 || !strings.Contains(out.String(), want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", content, code, out.String(), want)
		}
	}
}

func TestPrintConfigRedactsSecrets(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"serve", "--print-config", "--backend", "wss://user:pw@example.com/rpc?key=abc",
		"--backend-header", "Authorization: Bearer s3cret"}, &out, &errOut, env(map[string]string{"WSBRIDGE_CALL_TIMEOUT": "12s"}))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	got := out.String()
	for _, secret := range []string{"pw", "abc", "s3cret", "user"} {
		if strings.Contains(got, secret) {
			t.Errorf("--print-config shows %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{"backend: wss://REDACTED@example.com/rpc?REDACTED", "Authorization: REDACTED", "call-timeout: 12s", "grpc-addr: 127.0.0.1:9090"} {
		if !strings.Contains(got, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, got)
		}
	}
}

// The example config in the repository loads, and --print-config's output
// is itself a valid config giving the same configuration.
func TestExampleConfig(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--config", "../../examples/wsbridge.yaml", "--print-config"}, &out, &errOut, env(nil)); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"backend: ws://127.0.0.1:8081/", "resubscribe: true", "metrics-methods: [eth_call, eth_getBalance]", "log-format: json"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("effective config lacks %q:\n%s", want, out.String())
		}
	}
	again := filepath.Join(t.TempDir(), "again.yaml")
	if err := os.WriteFile(again, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var out2 bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--config", again, "--print-config"}, &out2, &errOut, env(nil)); code != 0 || out2.String() != out.String() {
		t.Fatalf("round trip: exit %d\n%s\nvs\n%s", code, out2.String(), out.String())
	}
}

func TestServeHelpListsEveryFlagWithItsVariable(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &stderr, &stderr, env(nil)); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := stderr.String()
	for _, name := range []string{"backend", "grpc-addr", "http-addr", "backend-eager", "backend-conns", "backend-header",
		"backoff-base", "backoff-multiplier", "backoff-jitter", "backoff-max", "backend-ping-interval", "backend-ping-timeout",
		"call-timeout", "max-inflight", "max-message-bytes", "shutdown-grace", "log-format", "log-level"} {
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
	for _, args := range [][]string{nil, {"bogus"}, {"serve", "--no-such-flag"}, {"serve", "extra"}, {"serve", "--log-format", "xml"},
		{"serve", "--backend-header", "no colon"}} {
		var out bytes.Buffer
		if code := run(context.Background(), args, &out, &out, env(nil)); code != 2 {
			t.Errorf("%q: exit %d, want 2 (output %q)", args, code, out.String())
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
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	run(context.Background(), []string{"serve", "--help"}, &out, &out, env(nil))
	for _, line := range strings.Split(out.String(), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "--"); ok {
			name = strings.Fields(name)[0]
			if !strings.Contains(string(readme), "| `--"+name+"` |") {
				t.Errorf("README.md's flag table lacks --%s", name)
			}
		}
	}
}
