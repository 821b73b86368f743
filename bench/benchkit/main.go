// Command benchkit holds the bench-only servers and load drivers that
// `make bench` (bench/runner) starts as separate processes:
//
//	echo-server    a plain grpc-go unary server: BridgeService.Call echoes
//	               params (case A, the ceiling of gRPC serving)
//	rest-gateway   grpc-gateway proxying REST to echo-server over loopback
//	               (case A-REST, the usual REST deployment)
//	naive-gateway  gRPC Call -> a fresh backend WebSocket per call (case G,
//	               the design wsbridge replaces)
//	wan-proxy      toxiproxy in front of the backend adding latency (the WAN
//	               profile)
//	load           HTTP and WebSocket load with HDR histograms (cases B,
//	               B-RPC, D, E, F, P-RPC, P-WS); prints one JSON result with
//	               p50, p99 and p99.9
//	idle-clients   opens N idle /ws clients, from several loopback source
//	               addresses when N outgrows one address's ephemeral ports,
//	               and holds them
//	pending        keeps N calls in flight over /ws and waits for them all
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchkit echo-server|rest-gateway|naive-gateway|wan-proxy|load|idle-clients|pending [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"echo-server":   echoServer,
		"rest-gateway":  restGateway,
		"naive-gateway": naiveGateway,
		"wan-proxy":     wanProxy,
		"load":          load,
		"idle-clients":  idleClients,
		"pending":       pending,
	}
	f, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, "benchkit: unknown command", os.Args[1])
		os.Exit(2)
	}
	if err := f(os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchkit:", err)
		os.Exit(1)
	}
}
