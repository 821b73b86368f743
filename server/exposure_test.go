package server

// Tests of the second security review (issue "nothing held before
// authentication, every body bounded after inflating, no internals in
// client errors"): each reproduces a finding against the server in
// process, over real sockets. The memory findings are measured against the
// built binary (cmd/wsbridge/security_e2e_test.go).

import (
	"net/http"
	"strings"
	"testing"
)

// hostGet is a GET of url with the Host header host.
func hostGet(t *testing.T, url, host string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The admin listener answers a Host it does not serve with 421, as the
// client listener does: a page that rebinds its name to 127.0.0.1 reads no
// stats, metrics or profiles. A Host that is an IP address is served
// (kubelet probes and Prometheus scrapes name the pod's IP; a rebinding
// page names its own DNS name).
func TestAdminListenerChecksTheHost(t *testing.T) {
	debug := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("profile")) })
	h := start(t, demoBackend(t), func(o *Options) { o.AdminAddr, o.AdminHandler = "127.0.0.1:0", debug })
	admin := "http://" + h.srv.AdminAddr().String()
	_, port, _ := strings.Cut(h.srv.AdminAddr().String(), ":")
	paths := []string{"/__stats", "/v1/stats", "/metrics", "/healthz", "/", "/debug/pprof/profile"}
	for _, path := range paths {
		if code := hostGet(t, admin+path, "rebound.example:"+port); code != http.StatusMisdirectedRequest {
			t.Errorf("admin %s for a rebound name: %d, want 421", path, code)
		}
		for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port} {
			if code := hostGet(t, admin+path, host); code != 200 {
				t.Errorf("admin %s for %s: %d", path, host, code)
			}
		}
	}
	// --allowed-hosts holds on the admin listener too; an IP address
	// always passes there.
	h2 := start(t, demoBackend(t), func(o *Options) {
		o.AdminAddr, o.AdminHandler, o.AllowedHosts = "127.0.0.1:0", debug, []string{"*.example.com"}
	})
	admin2 := "http://" + h2.srv.AdminAddr().String()
	for host, want := range map[string]int{"api.example.com": 200, "10.0.3.7:9091": 200, "127.0.0.1": 200, "rebound.example": 421, "localhost": 421} {
		if code := hostGet(t, admin2+"/metrics", host); code != want {
			t.Errorf("admin with --allowed-hosts, Host %s: %d, want %d", host, code, want)
		}
	}
}
