package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagPrecedence(t *testing.T) {
	var out bytes.Buffer
	define := func(getenv func(string) string) (*flagSet, *string, *time.Duration, *repeated) {
		fs := newFlagSet("serve", &out, getenv)
		addr := fs.String("grpc-addr", "default:1", "")
		d := fs.Duration("call-timeout", time.Second, "")
		var h repeated
		fs.Var(&h, "backend-header", "")
		return fs, addr, d, &h
	}
	fs, addr, d, h := define(env(nil))
	if err := fs.parse(nil); err != nil || *addr != "default:1" || *d != time.Second || len(h.values) != 0 {
		t.Fatalf("defaults: %v %q %v %v", err, *addr, *d, h.values)
	}
	e := env(map[string]string{"WSBRIDGE_GRPC_ADDR": "env:2", "WSBRIDGE_CALL_TIMEOUT": "5s", "WSBRIDGE_BACKEND_HEADER": "A: 1\nB: 2"})
	fs, addr, d, h = define(e)
	if err := fs.parse(nil); err != nil || *addr != "env:2" || *d != 5*time.Second || strings.Join(h.values, "|") != "A: 1|B: 2" {
		t.Fatalf("environment: %v %q %v %v", err, *addr, *d, h.values)
	}
	fs, addr, _, h = define(e)
	if err := fs.parse([]string{"--grpc-addr", "flag:3", "--backend-header", "C: 3"}); err != nil || *addr != "flag:3" || strings.Join(h.values, "|") != "C: 3" {
		t.Fatalf("flags over environment: %v %q %v", err, *addr, h.values)
	}
	fs, _, _, _ = define(env(map[string]string{"WSBRIDGE_CALL_TIMEOUT": "soon"}))
	if err := fs.parse(nil); err == nil || !strings.Contains(err.Error(), "WSBRIDGE_CALL_TIMEOUT") {
		t.Fatalf("a bad environment value must name its variable: %v", err)
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
