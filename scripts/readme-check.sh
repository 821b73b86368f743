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
"$bin" serve >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf 127.0.0.1:8080/__stats >/dev/null 2>&1 && break
  sleep 0.1
done

failed=0
while IFS= read -r cmd; do
  out=$(bash -c "$cmd" 2>&1) && rc=0 || rc=$?
  expect_error=0
  case "$cmd" in *"/fail"*|*"/sleep"*) expect_error=1 ;; esac
  if [ "$expect_error" = 1 ]; then
    if ! grep -q '"code"' <<<"$out"; then echo "FAIL (expected an error): $cmd"; echo "$out"; failed=1; continue; fi
  elif [ "$rc" != 0 ] || grep -q '"message"' <<<"$out"; then
    echo "FAIL (exit $rc): $cmd"; echo "$out"; failed=1; continue
  fi
  echo "ok: $cmd"
done < <(awk '/^```sh/{inb=1; next} /^```/{inb=0} inb && ($1=="grpcurl" || $1=="curl")' README.md)

kill -TERM $pid
wait $pid && rc=0 || rc=$?
trap - EXIT
if [ "$rc" != 0 ]; then echo "wsbridge exited $rc after SIGTERM"; cat "$log"; failed=1; fi
[ "$failed" = 0 ] || { cat "$log"; exit 1; }
echo "README commands: all ok"
