#!/usr/bin/env bash
# Instructions per request, counted by callgrind (valgrind): repeatable where wall-clock runs
# on two shared cores swing by ±15 %. Each process runs under callgrind and serves N1, then
# (in a second run) N2 requests from `oha -c 1`; the difference of the two totals over N2 − N1
# is the cost of one request, start-up excluded. Measured, in one run:
#   - the gateway proxying to an nginx `return 200` (RUST_LOG=info, and warn: no access log,
#     no spans), and HAProxy in the same harness (nbthread 1, http-reuse always);
#   - the catalog's GET /products/{id} (one product, so every read is a query of its own).
# User-space instructions only: the kernel's share (most of the time here) is not counted.
#
#   bash bench/instructions.sh                     # the builds in target/release
#   GATEWAY_BIN=/tmp/old/gateway CATALOG_BIN=/tmp/old/catalog bash bench/instructions.sh
#
# Needs valgrind, nginx, haproxy (Debian), oha (`cargo install oha --locked`), PostgreSQL and
# RabbitMQ for the catalog. Listens on loopback only; stops everything when done.
# The measured commands get their environment from exports inside $(...) subshells, on purpose.
# shellcheck disable=SC2030,SC2031
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-500}
N2=${N2:-2500}
missing=()
for tool in valgrind nginx haproxy; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v oha >/dev/null || { echo "needs oha: cargo install oha --locked" >&2; exit 1; }
if [[ -z ${GATEWAY_BIN:-} || -z ${CATALOG_BIN:-} ]]; then
  cargo build --release -q -p gateway -p catalog
fi
GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway}
CATALOG_BIN=${CATALOG_BIN:-target/release/catalog}

work=$(mktemp -d)
database="instructions_$$"
cleanup() {
  [[ -f $work/upstream.pid ]] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$database" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/upstream.conf" <<CONF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream.error.log warn;
daemon on;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.2:18181; location / { return 200 'ok\n'; } } }
CONF
nginx -c "$work/upstream.conf"

cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend front
  bind 127.0.0.1:18183
  default_backend upstream
backend upstream
  server upstream 127.0.0.2:18181
CONF

# The instructions callgrind counted in $1 (its output file).
total() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }

# One measured run: $1 label, $2 requests, $3 URL to wait for, $4 URL to load, then the
# command. Prints the total instructions.
measure() {
  local label=$1 requests=$2 ready=$3 url=$4
  shift 4
  valgrind --tool=callgrind --callgrind-out-file="$work/$label.$requests" "$@" >/dev/null 2>"$work/$label.$requests.log" &
  local pid=$!
  for _ in $(seq 150); do curl -s -o /dev/null -f "$ready" && break; sleep 0.2; done
  oha -n "$requests" -c 1 --no-tui --output-format json "$url" >"$work/$label.$requests.json"
  # Every request must have been answered 2xx: a run of errors would count their path instead.
  python3 - "$work/$label.$requests.json" "$label" <<'PY' || exit 1
import json, sys
report = json.load(open(sys.argv[1]))
bad = sum(n for code, n in report.get("statusCodeDistribution", {}).items() if not 200 <= int(code) < 300)
bad += sum(report.get("errorDistribution", {}).values())
if bad:
    sys.exit(f"INVALID RUN: {sys.argv[2]}: {bad} request(s) not answered 2xx")
PY
  kill -TERM "$pid"
  wait "$pid" || true
  total "$work/$label.$requests"
}

# Instructions per request of the command after $1..$3 (label, ready URL, load URL).
per_request() {
  local label=$1 ready=$2 url=$3
  shift 3
  local first second
  first=$(measure "$label" "$N1" "$ready" "$url" "$@")
  second=$(measure "$label" "$N2" "$ready" "$url" "$@")
  echo $(((second - first) / (N2 - N1)))
}

printf '%-44s %14s\n' "request" "instructions"
for level in info warn; do
  n=$(
    export ROUTES="/api/x=http://127.0.0.2:18181" HOST=127.0.0.1 PORT=18182 ADMIN_PORT=0 \
      HTTP_WORKERS=1 HEALTH_CHECK_INTERVAL_MS=0 RUST_LOG="$level"
    per_request "gateway-$level" http://127.0.0.1:18182/health/live http://127.0.0.1:18182/api/x/ "$GATEWAY_BIN"
  )
  printf '%-44s %14s\n' "gateway, RUST_LOG=$level" "$n"
done
n=$(per_request haproxy http://127.0.0.1:18183/ http://127.0.0.1:18183/api/x/ haproxy -f "$work/haproxy.cfg" -db)
printf '%-44s %14s\n' "haproxy (nbthread 1)" "$n"

createdb -h 127.0.0.1 -U postgres "$database"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database?sslmode=disable"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} AMQP_EXCHANGE="instructions.$$" AMQP_QUEUE_TYPE=classic
"$CATALOG_BIN" migrate >/dev/null
"$CATALOG_BIN" seed >/dev/null
# Start it once to learn a product's id.
HOST=127.0.0.1 PORT=18184 "$CATALOG_BIN" serve >/dev/null 2>&1 &
probe=$!
for _ in $(seq 100); do curl -s -o /dev/null -f http://127.0.0.1:18184/health/ready && break; sleep 0.2; done
id=$(curl -s 'http://127.0.0.1:18184/products?limit=1' | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
kill -TERM "$probe"
wait "$probe" || true
n=$(
  export HOST=127.0.0.1 PORT=18184 HTTP_WORKERS=1 RUST_LOG=info
  per_request catalog http://127.0.0.1:18184/health/ready "http://127.0.0.1:18184/products/$id" "$CATALOG_BIN" serve
)
printf '%-44s %14s\n' "catalog GET /products/{id}, RUST_LOG=info" "$n"
