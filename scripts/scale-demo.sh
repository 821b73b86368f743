#!/usr/bin/env bash
# make scale-demo: three wsbridge replicas behind nginx in front of one
# backend, load on every face through nginx, one replica crashed (SIGKILL)
# mid-run, then the same with a graceful stop (SIGTERM). Installs Debian's
# nginx when it is missing. Exits non-zero if a run breaks its promise.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "scale-demo: installing nginx (Debian package)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
GO=${GO:-go}

mkdir -p bin
$GO build -o bin/wsbridge ./cmd/wsbridge
$GO build -o bin/wsbridge-scaledemo ./cmd/wsbridge-scaledemo

echo "== A replica crashes (SIGKILL) =="
bin/wsbridge-scaledemo --wsbridge bin/wsbridge --nginx "$NGINX" --signal kill "$@"
echo
echo "== A replica stops gracefully (SIGTERM, as in a rolling update) =="
bin/wsbridge-scaledemo --wsbridge bin/wsbridge --nginx "$NGINX" --signal term "$@"
echo
echo "== One of two backends crashes (SIGKILL), behind the same three replicas =="
bin/wsbridge-scaledemo --wsbridge bin/wsbridge --nginx "$NGINX" --signal kill --backends 2 --stop backend "$@"
