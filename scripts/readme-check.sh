#!/usr/bin/env bash
# Runs every grpcurl and curl command of README.md, as printed, against
# `wsbridge serve` on its default ports (what `make run` starts). Commands
# the README says fail (the fail and sleep examples) must print an error;
# all others must succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.bin:$PATH"
command -v grpcurl >/dev/null || { echo "grpcurl not found: run make tools"; exit 1; }

bin=$(mktemp -d)/wsbridge
go build -o "$bin" ./cmd/wsbridge
log=$(mktemp)
"$bin" serve --demo --demo-tick 1s --descriptor-set examples/demo/demo.binpb >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf 127.0.0.1:8080/__stats >/dev/null 2>&1 && break
  sleep 0.1
done

failed=0
while IFS= read -r cmd; do
  case "$cmd" in
    npx*) # wscat only runs in a terminal
      out=$(script -qec "$cmd" /dev/null </dev/null 2>&1 | tr -d "\r") && rc=0 || rc=$? ;;
    *) out=$(bash -c "$cmd" 2>&1) && rc=0 || rc=$? ;;
  esac
  verdict=ok
  case "$cmd" in
    *"text/event-stream"*) { grep -q '^event: ' <<<"$out" && grep -q '^id: 1$' <<<"$out"; } || verdict="expected Server-Sent Events" ;;
    *"/fail"*|*"Grpc-Timeout"*) grep -q '"code"' <<<"$out" || verdict="expected an error" ;;
    *"max-time"*"tick"*) grep -q '"tick"' <<<"$out" || verdict="expected tick notifications" ;;
    *"max-time"*"DemoService/Ticks"*) grep -q '"seq"' <<<"$out" || verdict="expected typed stream messages" ;;
    *demo_subscribe*) grep -q 'demo_subscription' <<<"$out" || verdict="expected subscription notifications" ;;
    npx*) grep -q '"result"' <<<"$out" || verdict="expected a result" ;;
    *Session*) { [ "$rc" = 0 ] && [ "$(grep -c '"reply"' <<<"$out")" = 3 ]; } || verdict="expected three replies" ;;
    *"call fail"*) { [ "$rc" = 1 ] && grep -q 'Unimplemented' <<<"$out"; } || verdict="expected Unimplemented" ;;
    *WatchStats*|*"stats:watch"*) grep -q 'instanceId' <<<"$out" || verdict="expected stats snapshots" ;;
    *"/metrics"*) grep -q '^wsbridge_requests_handled_total' <<<"$out" || verdict="expected Prometheus metrics" ;;
    *openapi.json*) grep -q '"swagger": "2.0"' <<<"$out" || verdict="expected an OpenAPI 2.0 document" ;;
    *) { [ "$rc" = 0 ] && ! grep -q '"message"' <<<"$out"; } || verdict="exit $rc or an error" ;;
  esac
  if [ "$verdict" != ok ]; then echo "FAIL ($verdict): $cmd"; echo "$out"; failed=1; continue; fi
  echo "ok: $cmd"
done < <(awk '/^```sh/{inb=1; next} /^```/{inb=0} inb && ($1=="grpcurl" || $1=="curl" || $1=="npx" || ($1=="go" && $2=="run" && $4!="backend" && ($4!="serve" || /--print-config/)))' README.md)

kill -TERM $pid
wait $pid && rc=0 || rc=$?
trap - EXIT
if [ "$rc" != 0 ]; then echo "wsbridge exited $rc after SIGTERM"; cat "$log"; failed=1; fi
[ "$failed" = 0 ] || { cat "$log"; exit 1; }
echo "README commands: all ok"
