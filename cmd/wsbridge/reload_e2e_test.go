package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// SIGHUP reloads the method rules of the config file and never stops the
// gateway (issue 21 item 1: it used to exit 129 at once, cutting the calls
// in flight); a configuration that does not load keeps the one in use.
func TestSIGHUPReloadsAndNeverKills(t *testing.T) {
	config := filepath.Join(t.TempDir(), "wsbridge.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(config, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("demo: true\n")
	g := startGateway(t, "--config", config)
	if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	// A call in flight across the reload still answers.
	inFlight := make(chan error, 1)
	go func() {
		_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `[500]`)})
		inFlight <- err
	}()
	write("demo: true\ndeny-methods: [echo]\nmax-inflight: 7\nmax-message-bytes: 100000\n")
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	line := g.waitLog("reloaded (SIGHUP)")
	if changed := stringOf(line["changed"]); !strings.Contains(changed, "deny-methods") || !strings.Contains(changed, "max-inflight") ||
		!strings.Contains(stringOf(line["needs_restart"]), "max-message-bytes") {
		t.Fatalf("reload line %v", line)
	}
	if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("echo after the reload denied it: %v", err)
	}
	if err := <-inFlight; err != nil {
		t.Fatalf("the call in flight at the reload: %v", err)
	}
	// A configuration that does not load keeps the one in use.
	write("demo: true\nmax-inflight: -5\n")
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	g.waitLog("reload failed (SIGHUP): the configuration in use stays")
	if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("echo after a reload that failed: %v", err)
	}
	if code := g.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// SIGHUP adds, removes and reweights backends (issue 21): under load, the
// config file's backends: is changed from a to b. No call fails, the
// call a holds is answered by a, the calls go to b from the reload on,
// a's connection closes once its calls are over and its row leaves the
// stats; the log line says what changed.
func TestSIGHUPReplacesBackendsUnderLoad(t *testing.T) {
	_, urlA := startBackend(t, "127.0.0.1:0")
	_, urlB := startBackend(t, "127.0.0.1:0")
	config := filepath.Join(t.TempDir(), "wsbridge.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(config, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("backends:\n  - url: " + urlA + "\nmax-inflight-per-client: 3000\n")
	g := startGateway(t, "--config", config)
	load := startEchoLoad(t, g, 16)
	load.waitOK(t, 500)
	held := make(chan error, 1)
	go func() {
		_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `{"ms":1000}`)})
		held <- err
	}()
	g.waitStats(t, "the sleep call at a", func(st *wsbridgev1.Stats) bool { return st.Backends[0].Waiting > 0 })

	write("backends:\n  - url: " + urlB + "\n    weight: 2\nmax-inflight-per-client: 3000\n")
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	line := g.waitLog("reloaded (SIGHUP)")
	if got := stringOf(line["backends"]); !strings.Contains(got, "added") || !strings.Contains(got, "removed") {
		t.Fatalf("reload line %v", line)
	}
	if changed := stringOf(line["changed"]); changed != "[backends]" {
		t.Fatalf("reload line %v", line)
	}
	before := g.getStats(t)
	if err := <-held; err != nil {
		t.Fatalf("the call a held across the reload: %v", err)
	}
	st := g.waitStats(t, "a drained and gone", func(st *wsbridgev1.Stats) bool { return len(st.Backends) == 1 })
	b := st.Backends[0]
	if b.Url != strings.TrimSuffix(urlB, "/") && b.Url != urlB {
		t.Fatalf("the row left is %s; want b %s", b.Url, urlB)
	}
	load.finish(t) // no echo call failed
	if st := g.getStats(t); backendRow(t, st, b.Url).RequestsSent <= backendRow(t, before, b.Url).RequestsSent {
		t.Fatal("b took no calls after the reload")
	}
	// A second reload, of a limit: from 3000 calls in flight per client
	// to 1. The changes that need a restart are named again.
	write("backends:\n  - url: " + urlB + "\n    weight: 2\nmax-inflight-per-client: 1\nmax-batch: 9\n")
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	line = g.waitLog("reloaded (SIGHUP)")
	if stringOf(line["changed"]) != "[max-inflight-per-client]" || stringOf(line["backends"]) != "no change" || stringOf(line["needs_restart"]) != "[max-batch]" {
		t.Fatalf("second reload line %v", line)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `{"ms":200}`)})
			errs <- err
		}()
	}
	limited := 0
	for range 8 {
		if status.Code(<-errs) == codes.ResourceExhausted {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("--max-inflight-per-client 1 after the reload limited no call")
	}
	if code := g.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// The TLS certificate follows its files: a renewed certificate reaches
// new handshakes without a restart, and its expiry is a metric (issue 21
// item 2).
func TestTLSCertificateIsReloaded(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first := writeCert(t, cert, key, time.Now().Add(48*time.Hour))
	g := startGateway(t, "--demo", "--tls-cert", cert, "--tls-key", key, "--admin-addr", "127.0.0.1:0")
	served := func() time.Time {
		t.Helper()
		c, err := tls.Dial("tcp", g.httpAddr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test reads the served certificate
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].NotAfter
	}
	if got := served(); !got.Equal(first) {
		t.Fatalf("served %v, want %v", got, first)
	}
	second := writeCert(t, cert, key, time.Now().Add(90*24*time.Hour))
	deadline := time.Now().Add(20 * time.Second)
	for !served().Equal(second) {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate is not served")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + g.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got float64
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "wsbridge_tls_cert_not_after_seconds "); ok {
			got, _ = strconv.ParseFloat(v, 64)
		}
	}
	if got != float64(second.Unix()) {
		t.Fatalf("wsbridge_tls_cert_not_after_seconds %v, want %d", got, second.Unix())
	}
}

func stringOf(v any) string { return fmt.Sprint(v) }

// writeCert writes a self-signed certificate for 127.0.0.1 expiring at
// notAfter, and its key, and returns its NotAfter as the certificate has
// it (to the second).
func writeCert(t *testing.T, certFile, keyFile string, notAfter time.Time) time.Time {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter.Truncate(time.Second), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	// The key first: a reader between the two writes sees a pair that does
	// not match, and keeps the old one.
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tmpl.NotAfter.UTC()
}

// `wsbridge call` exit codes say what failed (issue 21 item 8): 0 a
// result, 1 the backend answered with an error, 2 the command line, 3 the
// gateway could not be reached, 4 the gateway failed the call. `wsbridge
// stats --admin` reads the admin listener.
func TestCLIExitCodesAndAdminStats(t *testing.T) {
	g := startGateway(t, "--demo", "--admin-addr", "127.0.0.1:0")
	call := func(args ...string) int {
		var out, errOut strings.Builder
		return run(ctxT(t), append([]string{"call", "--grpc-addr", g.grpcAddr}, args...), &out, &errOut)
	}
	if code := call("add", "[1,2]"); code != 0 {
		t.Errorf("a result: exit %d", code)
	}
	if code := call("fail", `{"code":-32602,"message":"m"}`); code != exitBackendError {
		t.Errorf("a backend error: exit %d", code)
	}
	if code := call("add", "not json"); code != exitUsage {
		t.Errorf("bad params: exit %d", code)
	}
	if code := call("--timeout", "100ms", "sleep", "[1000]"); code != exitGateway {
		t.Errorf("a deadline: exit %d", code)
	}
	var out, errOut strings.Builder
	if code := run(ctxT(t), []string{"call", "--grpc-addr", freeAddr(t), "--timeout", "2s", "echo"}, &out, &errOut); code != exitUnreachable {
		t.Errorf("no gateway there: exit %d (%s)", code, errOut.String())
	}
	out.Reset()
	if code := run(ctxT(t), []string{"stats", "--admin", g.adminAddr, "--json"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), `"requestsHandled"`) {
		t.Errorf("stats --admin: exit %d: %s %s", code, out.String(), errOut.String())
	}
}

// --backend on the command line replacing a config file's backends: (and
// their settings) is said in the log, not done silently (issue 21 item 8).
func TestFlagsReplacingTheFilesBackendsAreLogged(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	config := filepath.Join(t.TempDir(), "wsbridge.yaml")
	if err := os.WriteFile(config, []byte("backends:\n  - url: ws://127.0.0.1:1/\n    weight: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--config", config, "--backend", url)
	p.waitLog("the backends given by --backend replace the config file's backends: list and its settings")
}
