package main

import (
	"bytes"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The peer is proxyd (github.com/ethereum-optimism/infra/proxyd), a Go
// JSON-RPC gateway deployed in front of Ethereum nodes, run against the same
// demo backend as every other case, on the two faces it shares with
// wsbridge: HTTP JSON-RPC (P-RPC, compared with /rpc) and WebSocket (P-WS,
// compared with /ws). make bench builds it from bench/peer/go.mod at the
// version pinned there.
//
// It runs as two processes because proxyd serves a WebSocket method one of
// two ways, chosen per method for the whole server: listed only in
// ws_method_whitelist, each call goes straight through the client's own
// backend WebSocket (proxyd's pass-through design, one backend socket per
// client); listed in rpc_method_mappings too, each call becomes an HTTP
// request to the backend group. echo must be mapped for the HTTP face, so
// the WebSocket face, measured in pass-through, has a process of its own.
//
// Nothing in either configuration throttles or shortcuts: rate_limit and
// sender_rate_limit have no base rate (off), the cache, Redis, metrics and
// consensus-aware routing are off (so proxyd polls nothing on the backend:
// it sends only the clients' calls), max_concurrent_rpcs is 0 (unlimited).
// Logging is at warn: at info proxyd logs every WebSocket message.

// peerRPCConfig is the P-RPC process: echo mapped to the backend over HTTP.
const peerRPCConfig = `[server]
rpc_host = "127.0.0.1"
rpc_port = %d
ws_port = 0
log_level = "warn"
max_concurrent_rpcs = 0

[backends.demo]
rpc_url = "%s"

[backend_groups.main]
backends = ["demo"]

[rpc_method_mappings]
echo = "main"
`

// peerWSConfig is the P-WS process: echo passed through to the backend's
// WebSocket. proxyd does not start without one mapped method; counter is
// never called here.
const peerWSConfig = `ws_backend_group = "main"
ws_method_whitelist = ["echo"]

[server]
rpc_port = 0
ws_host = "127.0.0.1"
ws_port = %d
log_level = "warn"

[backends.demo]
rpc_url = "%s"
ws_url = "%s"

[backend_groups.main]
backends = ["demo"]

[rpc_method_mappings]
counter = "main"
`

type peer struct {
	rpc, ws *proc  // addr is host:port
	dir     string // their configurations and logs; removed by run
	info    PeerInfo
}

// PeerInfo says which peer ran, and how, in the report.
type PeerInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Setup   string `json:"setup"`
	// Configs are the TOML files each process ran with.
	Configs map[string]string `json:"configs"`
}

// startPeer starts proxyd in front of the backend. Without a proxyd binary
// it returns a nil peer and the reason, and the bench goes on without it.
func (o options) startPeer(backendHTTP, backendWS string) (*peer, string, error) {
	if _, err := os.Stat(o.proxyd); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("no proxyd binary at %s (make bench builds it from bench/peer when the Go module proxy serves github.com/ethereum-optimism/infra/proxyd; -proxyd PATH names another build)", o.proxyd), nil
	}
	dir, err := os.MkdirTemp("", "wsbridge-bench-proxyd-")
	if err != nil {
		return nil, "", err
	}
	p := &peer{dir: dir, info: PeerInfo{Name: "proxyd", Version: moduleVersion(o.proxyd), Configs: map[string]string{},
		Setup: "two processes against the demo backend: HTTP with echo in rpc_method_mappings; WebSocket with echo in ws_method_whitelist (pass-through, a backend socket per client); no rate limits, cache or consensus polling; log level warn"}}
	var wsPort int
	rpcPort, err := freePort()
	if err == nil {
		wsPort, err = freePort()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	p.info.Configs["proxyd-rpc"] = fmt.Sprintf(peerRPCConfig, rpcPort, backendHTTP)
	p.info.Configs["proxyd-ws"] = fmt.Sprintf(peerWSConfig, wsPort, backendHTTP, backendWS)
	if p.rpc, err = o.startProxyd(dir, "proxyd-rpc", p.info.Configs["proxyd-rpc"], rpcPort, true); err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	if p.ws, err = o.startProxyd(dir, "proxyd-ws", p.info.Configs["proxyd-ws"], wsPort, false); err != nil {
		p.rpc.stop()
		os.RemoveAll(dir)
		return nil, "", err
	}
	return p, "", nil
}

// startProxyd writes config to dir, starts proxyd on it and waits until it
// serves: for HTTP, an echo that comes back with a result; for WebSocket, an
// open port. proxyd's output goes to a log file beside the config.
func (o options) startProxyd(dir, name, config string, port int, isHTTP bool) (*proc, error) {
	cfg := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(o.proxyd, cfg)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if serving(p.addr, isHTTP) {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("%s did not start serving on %s: %s", name, p.addr, lastLines(out, 5))
		}
	}
}

func serving(addr string, isHTTP bool) bool {
	if !isHTTP {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Post("http://"+addr+"/", "application/json", strings.NewReader(rpcBody("20B")))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode == 200 && bytes.Contains(b.Bytes(), []byte(`"result":`))
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freePort is a loopback port free a moment ago: proxyd takes fixed ports
// from its configuration and cannot say which one it got.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// moduleVersion is the module and version a Go binary's main package came
// from, as its build information records it: a tool built in another module
// (bench/peer) lists its own module among the dependencies.
func moduleVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown version"
	}
	best := &bi.Main
	for _, m := range bi.Deps {
		if (bi.Path == m.Path || strings.HasPrefix(bi.Path, m.Path+"/")) && len(m.Path) > len(best.Path) {
			best = m
		}
	}
	v := best.Path + "@" + best.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && best == &bi.Main {
			v += " (" + s.Value + ")"
		}
	}
	return v
}
