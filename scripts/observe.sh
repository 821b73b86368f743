#!/usr/bin/env bash
# make observe: the gateway with the demo backend (gRPC 127.0.0.1:9090, HTTP
# 127.0.0.1:8080, admin 127.0.0.1:9091), a Prometheus on 127.0.0.1:9099
# scraping it every 2 s with deploy/observability/alerts.yaml, and a little
# load (echo, sleep, and a failing call now and then), until Ctrl-C.
# Installs Debian's prometheus when it is missing.
#
# OBSERVE_SECONDS=N stops it by itself after N seconds (for scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if ! command -v prometheus >/dev/null && [ ! -x /usr/bin/prometheus ]; then
  echo "observe: installing prometheus (Debian package)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a Prometheus service on :9090 where systemd runs;
  # the gateway needs that port.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    echo "observe: stopping the prometheus service the package started (it holds :9090)"
    $sudo systemctl stop prometheus || true
  fi
fi
PROMETHEUS=$(command -v prometheus || echo /usr/bin/prometheus)
command -v curl >/dev/null || { echo "observe: curl is needed for the load (apt-get install curl)"; exit 1; }
GO=${GO:-go}

GRPC=127.0.0.1:9090 HTTP=127.0.0.1:8080 ADMIN=127.0.0.1:9091 PROM=127.0.0.1:9099
for addr in $GRPC $HTTP $ADMIN $PROM; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "observe: something already listens on $addr; stop it first (make run? a prometheus service?)" >&2
    exit 1
  fi
done

mkdir -p bin
$GO build -o bin/wsbridge ./cmd/wsbridge

WORK=$(mktemp -d -t wsbridge-observe.XXXXXX)
PIDS=()
# shellcheck disable=SC2317 # (called by the traps)
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "observe: stopping"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM   # Ctrl-C is the normal way to stop

cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $ROOT/deploy/observability/alerts.yaml
scrape_configs:
  - job_name: wsbridge
    static_configs:
      - targets: ['$ADMIN']
EOF

bin/wsbridge serve --demo --demo-tick 1s --admin-addr "$ADMIN" --grpc-addr "$GRPC" --http-addr "$HTTP" \
  >"$WORK/wsbridge.log" 2>&1 &
PIDS+=($!)
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --web.listen-address="$PROM" --web.console.templates="$WORK/consoles" \
  --web.console.libraries="$WORK/console_libraries" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

# wait_for NAME URL LOG: until URL answers 200, or fail showing LOG.
wait_for() {
  for _ in $(seq 1 150); do
    curl -fs -o /dev/null "$2" && return 0
    sleep 0.2
  done
  echo "observe: $1 did not come up ($2); its log:" >&2
  cat "$3" >&2
  exit 1
}
wait_for wsbridge "http://$ADMIN/readyz" "$WORK/wsbridge.log"
wait_for prometheus "http://$PROM/-/ready" "$WORK/prometheus.log"

cat <<EOF

wsbridge (demo backend)
  REST, /rpc, /ws       http://$HTTP/
  gRPC                  $GRPC
  dashboard             http://$ADMIN/
  metrics               http://$ADMIN/metrics
  stats                 http://$ADMIN/v1/stats
Prometheus (scraping it every 2 s with deploy/observability/alerts.yaml)
  graph                 http://$PROM/graph?g0.expr=sum%20by%20(face%2C%20code)%20(rate(wsbridge_call_duration_seconds_count%5B1m%5D))&g0.tab=0
  alerts                http://$PROM/alerts
  rules                 http://$PROM/rules
  targets               http://$PROM/targets
Grafana: add a Prometheus data source at http://$PROM and import
  $ROOT/deploy/observability/grafana-dashboard.json
Logs: $WORK/wsbridge.log, $WORK/prometheus.log

Driving a little load (echo; a 200 ms sleep and a failing call now and then).
Ctrl-C stops everything.
EOF

post() { curl -s -o /dev/null -H 'Content-Type: application/json' "http://$HTTP/v1/call/$1" -d "$2" || true; }
(
  i=0
  while true; do
    i=$((i + 1))
    post echo "[$i]"
    (( i % 5 == 0 )) && post sleep '{"ms":200}'
    (( i % 10 == 0 )) && post fail '{"code":-32601,"message":"observe.sh: a failing call"}'
    sleep 0.1
  done
) &
PIDS+=($!)

if [ -n "${OBSERVE_SECONDS:-}" ]; then
  sleep "$OBSERVE_SECONDS" &
  PIDS+=($!)
  wait "$!" || true
  # Check that it all worked: the gateway counted the load, Prometheus
  # scraped it and loaded the rules.
  handled=$(curl -s "http://$ADMIN/v1/stats" | grep -o '"requestsHandled":"[0-9]*"' | grep -o '[0-9]*' || true)
  scraped=$(curl -s "http://$PROM/api/v1/query" --data-urlencode 'query=wsbridge_requests_handled_total{job="wsbridge"}' |
    grep -o '"value":\[[^]]*\]' | grep -o '"[0-9]*"\]' | tr -dc 0-9 || true)
  rules=$(curl -s "http://$PROM/api/v1/rules" | grep -o '"type":"alerting"' | wc -l)
  echo "observe: after ${OBSERVE_SECONDS}s: the gateway handled ${handled:-?} requests, Prometheus last scraped ${scraped:-none}, ${rules} alerting rules loaded"
  if [ "${handled:-0}" -gt 0 ] && [ "${scraped:-0}" -gt 0 ] && [ "$rules" -gt 0 ]; then exit 0; fi
  echo "observe: something did not work; the end of the logs:" >&2
  tail -n 20 "$WORK/wsbridge.log" "$WORK/prometheus.log" >&2
  exit 1
fi
# Until Ctrl-C, or until the gateway or Prometheus exits.
wait -n "${PIDS[0]}" "${PIDS[1]}" || true
echo "observe: wsbridge or prometheus exited; the end of their logs:" >&2
tail -n 20 "$WORK/wsbridge.log" "$WORK/prometheus.log" >&2
exit 1
