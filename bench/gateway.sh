#!/usr/bin/env bash
# Gateway benchmark: the same upstream measured directly, through Dockyard's gateway, and
# through nginx, HAProxy and Caddy (each configured fairly: connections to the upstream kept
# alive and reused, no access log, 2 workers/threads), under the same wrk load, in one run.
# Prints req/s, p50 and p99 latency for each, the errors wrk counted (non-2xx answers, socket
# errors: a run with any is marked INVALID and the script exits 1), and the ratios. Then a
# fixed-rate pass with oha at half of the gateway's saturation rate, latency corrected for
# coordinated omission, printing each proxy's p99 over direct's and oha's non-2xx and errors.
#
#   bash bench/gateway.sh                  # 3 interleaved rounds of 5 s per target, 64 connections
#   DURATION=30s CONNECTIONS=128 GATEWAY_WORKERS=1 bash bench/gateway.sh
#   GATEWAY_BIN=/tmp/gateway-before bash bench/gateway.sh   # another build of the gateway
#
# Needs Debian's nginx, haproxy, caddy and wrk, and oha (all installed if missing; oha with
# `cargo install oha --locked`, about 5 minutes). Everything listens on
# loopback only and
# stops when the script ends. The upstream is an nginx `return 200`, so it is never the
# bottleneck being measured. On a 2-core machine the load generator, the proxy and the upstream
# share the cores: compare the rows of one run, not runs on different machines.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
# Rounds over all targets, interleaved; each target's median round is printed. On a shared
# 2-core machine one pass per target, one after the other, swung the ratios by ±20 %.
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
UPSTREAM=127.0.0.2:18081
NGINX=127.0.0.1:18082
GATEWAY=127.0.0.1:18083
HAPROXY=127.0.0.1:18084
CADDY=127.0.0.1:18085
FIXED_SECONDS=${FIXED_SECONDS:-10}

missing=()
for tool in nginx haproxy caddy wrk; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v oha >/dev/null || cargo install --quiet --locked oha
for tool in nginx haproxy caddy wrk oha; do
  command -v "$tool" >/dev/null || { echo "$tool is missing and could not be installed" >&2; exit 1; }
done
if [[ -z ${GATEWAY_BIN:-} ]]; then
  cargo build --release -q -p gateway
  GATEWAY_BIN=target/release/gateway
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/upstream.pid ]] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  [[ -f $work/proxy.pid ]] && kill "$(cat "$work/proxy.pid")" 2>/dev/null || true
  [[ -f $work/haproxy.pid ]] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true
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
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
  pidfile $work/haproxy.pid
  daemon
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend public
  bind $HAPROXY
  default_backend upstream
backend upstream
  http-request replace-path /api/x(/.*) \\1
  server upstream $UPSTREAM
CONF
haproxy -f "$work/haproxy.cfg"
cat >"$work/Caddyfile" <<CONF
{
  admin off
  auto_https off
}
http://${CADDY} {
  bind ${CADDY%%:*}
  handle_path /api/x/* {
    reverse_proxy $UPSTREAM
  }
}
CONF
GOMAXPROCS=2 XDG_DATA_HOME=$work XDG_CONFIG_HOME=$work caddy run --config "$work/Caddyfile" --adapter caddyfile \
  >"$work/caddy.log" 2>&1 &
pids+=($!)
ROUTES="/api/x=http://$UPSTREAM" HOST=127.0.0.1 PORT=${GATEWAY##*:} HTTP_WORKERS=${GATEWAY_WORKERS:-2} RUST_LOG=warn \
  "$GATEWAY_BIN" >"$work/gateway.log" 2>&1 &
pids+=($!)
for url in "http://$GATEWAY/api/x/item" "http://$HAPROXY/api/x/item" "http://$CADDY/api/x/item"; do
  for _ in $(seq 50); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
  curl -sf "$url" >/dev/null || { echo "no answer from $url" >&2; exit 1; }
done

measure() { # label, url: one wrk pass, appended to $work/passes as "label req/s p50 p99 errors"
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
  # Errors: answers other than 2xx/3xx, and connect/read/write/timeout socket errors.
  awk -v label="$1" '/Requests\/sec/ {rps = $2} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
    /Non-2xx or 3xx responses:/ {errors += $NF}
    /Socket errors:/ {gsub(/,/, ""); errors += $4 + $6 + $8 + $10}
    END {print label, rps, p50, p99, errors + 0}' <<<"$out" >>"$work/passes"
}

declare -A URLS=(
  [direct]="http://$UPSTREAM/item" [gateway]="http://$GATEWAY/api/x/item"
  [nginx]="http://$NGINX/api/x/item" [haproxy]="http://$HAPROXY/api/x/item"
  [caddy]="http://$CADDY/api/x/item"
)
TARGETS=(direct gateway nginx haproxy caddy)
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds (median shown), $(nproc) cores, $(date -u +%FT%TZ)"
for target in "${TARGETS[@]}"; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${URLS[$target]}" >/dev/null # warm-up
done
for _ in $(seq "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do measure "$target" "${URLS[$target]}"; done
done
python3 - "$work/passes" "$work/rps" "${TARGETS[@]}" <<'PY'
import sys
passes, out, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
rows, errors = {}, {}
for line in open(passes):
    label, rps, p50, p99, failed = line.split()
    rows.setdefault(label, []).append((float(rps), p50, p99))
    errors[label] = errors.get(label, 0) + int(failed)
print(f"{'target':<10} {'req/s':>12} {'p50':>10} {'p99':>10} {'errors':>7}   rounds (req/s)")
with open(out, "w") as table:
    for label in targets:
        runs = sorted(rows[label])
        rps, p50, p99 = runs[len(runs) // 2]
        every = " ".join(f"{r:.0f}" for r, _, _ in rows[label])
        print(f"{label:<10} {rps:12.0f} {p50:>10} {p99:>10} {errors[label]:>7}   {every}")
        table.write(f"{label} {rps}\n")
bad = [label for label in targets if errors[label]]
if bad:
    print(f"INVALID: errors (non-2xx answers or socket errors) from {', '.join(bad)}")
    open(out + ".invalid", "w").write(" ".join(bad))
PY
awk '{r[$1] = $2} END {
  printf "gateway/haproxy req/s: %.2f (target >= 1.0)   gateway/nginx: %.2f   gateway/caddy: %.2f   gateway/direct: %.2f\n",
    r["gateway"] / r["haproxy"], r["gateway"] / r["nginx"], r["gateway"] / r["caddy"], r["gateway"] / r["direct"] }' "$work/rps"

# Memory: the gateway's resident set idle (after the load above), and with 1,000 client
# connections open, each having sent one request and kept alive.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
gateway_pid=${pids[-1]}
sleep 1
idle=$(rss "$gateway_pid")
python3 - "$GATEWAY" "$gateway_pid" "$idle" <<'PY'
import socket, sys, time
host, port = sys.argv[1].split(":")
pid, idle = sys.argv[2], int(sys.argv[3])
conns = []
for _ in range(1000):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /api/x/item HTTP/1.1\r\nHost: gw\r\n\r\n")
    conns.append(s)
for s in conns:
    s.recv(4096)
time.sleep(1)
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
print(f"gateway RSS: idle {idle / 1024:.1f} MiB, with 1,000 open client connections {rss / 1024:.1f} MiB")
for s in conns:
    s.close()
PY

# Fixed rate: half of the gateway's saturation rate, latency corrected for coordinated
# omission (wrk cannot hold a rate). p99 added = the target's p99 minus direct's.
rate=$(awk '$1 == "gateway" {printf "%d", $2 / 2}' "$work/rps")
echo
echo "oha -q $rate --latency-correction -c $CONNECTIONS -z ${FIXED_SECONDS}s (half the gateway's saturation)"
printf '%-10s %12s %10s %10s %14s %7s\n' target req/s p50 p99 'p99 added' errors
for target in "${TARGETS[@]}"; do
  oha -q "$rate" --latency-correction -c "$CONNECTIONS" -z 2s --no-tui "${URLS[$target]}" >/dev/null # warm-up
  # -w: requests in flight when the time is up are waited for, not counted as aborted errors.
  oha -q "$rate" --latency-correction -c "$CONNECTIONS" -z "${FIXED_SECONDS}s" -w --no-tui --output-format json \
    "${URLS[$target]}" >"$work/$target.json"
  python3 - "$target" "$work/$target.json" "$work/fixed" <<'PY'
import json, sys
target, path, table = sys.argv[1], sys.argv[2], sys.argv[3]
report = json.load(open(path))
rps = report["summary"]["requestsPerSec"]
p50 = report["latencyPercentiles"]["p50"] * 1000
p99 = report["latencyPercentiles"]["p99"] * 1000
base = None
if target != "direct":
    for line in open(table):
        name, value = line.split()
        if name == "direct":
            base = float(value)
added = f"{p99 - base:+.2f} ms" if base is not None else ""
# Answers other than 2xx, and requests that got none (connection errors, time-outs).
statuses = report.get("statusCodeDistribution", {})
errors = sum(n for code, n in statuses.items() if not 200 <= int(code) < 300)
errors += sum(report.get("errorDistribution", {}).values())
print(f"{target:<10} {rps:12.0f} {p50:8.2f}ms {p99:8.2f}ms {added:>14} {errors:>7}")
with open(table, "a") as out:
    out.write(f"{target} {p99}\n")
if errors:
    kinds = {**{f"HTTP {c}": n for c, n in statuses.items() if not 200 <= int(c) < 300},
             **report.get("errorDistribution", {})}
    print(f"{'':<10} errors: {kinds}")
    open(table + ".invalid", "a").write(f"{target} ")
PY
done
echo "target: the gateway adds <= 0.5 ms to p99"
invalid=$(cat "$work/rps.invalid" "$work/fixed.invalid" 2>/dev/null || true)
if [[ -n $invalid ]]; then
  echo "INVALID RUN: errors from $invalid (see the errors columns)"
  exit 1
fi
