#!/usr/bin/env bash
# Gateway benchmark: the same upstream measured directly, through Dockyard's gateway and
# through nginx (configured equivalently: keepalive to the upstream, no access log), under the
# same wrk load, in one run. Prints req/s, p50 and p99 latency for each, and the ratios.
#
#   bash bench/gateway.sh                  # 10 s per target, 64 connections
#   DURATION=30s CONNECTIONS=128 GATEWAY_WORKERS=1 bash bench/gateway.sh
#
# Needs Debian's nginx and wrk (installed if missing). Everything listens on loopback only and
# stops when the script ends. The upstream is an nginx `return 200`, so it is never the
# bottleneck being measured. On a 2-core machine the load generator, the proxy and the upstream
# share the cores: compare the rows of one run, not runs on different machines.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
UPSTREAM=127.0.0.2:18081
NGINX=127.0.0.1:18082
GATEWAY=127.0.0.1:18083

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
cargo build --release -q -p gateway

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/upstream.pid ]] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  [[ -f $work/proxy.pid ]] && kill "$(cat "$work/proxy.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

nginx_conf() { # name, server block
  cat >"$work/$1.conf" <<CONF
worker_processes 2;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1.body;
  proxy_temp_path $work/$1.proxy;
  fastcgi_temp_path $work/$1.fastcgi;
  uwsgi_temp_path $work/$1.uwsgi;
  scgi_temp_path $work/$1.scgi;
  $2
}
CONF
  nginx -c "$work/$1.conf" -p "$work"
}

nginx_conf upstream "server { listen $UPSTREAM; location / { return 200 'ok\n'; } }"
nginx_conf proxy "upstream backend { server $UPSTREAM; keepalive 64; }
  server { listen $NGINX; location /api/x/ {
    proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
ROUTES="/api/x=http://$UPSTREAM" HOST=127.0.0.1 PORT=${GATEWAY##*:} HTTP_WORKERS=${GATEWAY_WORKERS:-2} RUST_LOG=warn \
  target/release/gateway >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf "http://$GATEWAY/api/x/item" >/dev/null && break; sleep 0.1; done

measure() { # label, url
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$2" >/dev/null # warm-up
  local out rps p50 p99
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  printf '%-10s %12s %10s %10s\n' "$1" "$rps" "$p50" "$p99"
  echo "$1 $rps" >>"$work/rps"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cores, $(date -u +%FT%TZ)"
printf '%-10s %12s %10s %10s\n' target req/s p50 p99
measure direct "http://$UPSTREAM/item"
measure gateway "http://$GATEWAY/api/x/item"
measure nginx "http://$NGINX/api/x/item"
awk '{r[$1] = $2} END {
  printf "gateway/nginx req/s: %.2f   gateway/direct: %.2f   nginx/direct: %.2f\n",
    r["gateway"] / r["nginx"], r["gateway"] / r["direct"], r["nginx"] / r["direct"] }' "$work/rps"
