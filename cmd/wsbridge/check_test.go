package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `wsbridge check` and `serve --print-config` refuse what serve refuses
// (issue 21 item 3: --print-config used to exit 0 for each of these), with
// serve's one-line error and exit 2, and print the effective, redacted
// configuration when it holds.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	dir := t.TempDir()
	both := filepath.Join(dir, "both.yaml")
	if err := os.WriteFile(both, []byte("backend: ws://a:1/\nbackends:\n  - url: ws://b:1/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args  []string
		want  string
		files bool // a file is missing: wsbridge check refuses it, --print-config (values only) prints
	}{
		{[]string{"--backend", "ws://127.0.0.1:1/", "--max-inflight", "-5"}, "--max-inflight", false},
		{nil, "no backend", false},
		{[]string{"--demo", "--backend", "ws://127.0.0.1:1/"}, "--demo", false},
		{[]string{"--config", both}, "both backend: and backends:", false},
		{[]string{"--demo", "--descriptor-set", filepath.Join(dir, "missing.binpb")}, "missing.binpb", true},
		{[]string{"--demo", "--tls-cert", filepath.Join(dir, "no.pem"), "--tls-key", filepath.Join(dir, "no.key")}, "no.pem", true},
	} {
		cmds := [][]string{{"check"}}
		if !tc.files {
			cmds = append(cmds, []string{"serve", "--print-config"})
		}
		for _, cmd := range cmds {
			var out, errOut bytes.Buffer
			code := run(context.Background(), append(append([]string{}, cmd...), tc.args...), &out, &errOut)
			if code != 2 || !strings.Contains(errOut.String(), tc.want) || strings.Count(strings.TrimSpace(errOut.String()), "\n") != 0 || out.Len() != 0 {
				t.Errorf("%v %v: exit %d, stderr %q, stdout %d bytes; want 2 and one line naming %q", cmd, tc.args, code, errOut.String(), out.Len(), tc.want)
			}
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"check", "--backend", "wss://user:pw@example.com/rpc?key=abc", "--descriptor-set", "../../examples/demo/demo.binpb"}, &out, &errOut); code != 0 {
		t.Fatalf("a good configuration: exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String(), "pw") || strings.Contains(out.String(), "abc") || !strings.Contains(out.String(), "descriptor-set") {
		t.Errorf("the printed configuration:\n%s", out.String())
	}
}

// Every example configuration passes the check (CI runs it on each).
func TestExampleConfigsPassTheCheck(t *testing.T) {
	clearEnv(t)
	for _, file := range []string{"../../examples/wsbridge.yaml", "../../examples/backends.yaml"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"check", "--config", file}, &out, &errOut); code != 0 {
			t.Errorf("%s: exit %d: %s", file, code, errOut.String())
		}
	}
}
