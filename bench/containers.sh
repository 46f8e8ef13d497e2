#!/usr/bin/env bash
# The gateway's req/s for catalog reads, the same stack run two ways in one run: as containers
# (`docker compose`, through the published port — Docker's userland proxy — and straight to
# the gateway container's address on the Compose network), and as local processes
# (`cargo xtask up --release`). Both with the Compose stack's settings: JSON logs at info and
# every span exported to the console. wrk errors (non-2xx, socket errors) make a row INVALID
# and the script exit 1.
#
#   bash bench/containers.sh                                   # upstream images (a registry)
#   ENV_FILE=deploy/offline.env bash bench/containers.sh       # no registry: local images
#
# Needs a Docker engine (cargo xtask compose-test starts one), wrk, PostgreSQL and RabbitMQ on
# the host for the process stack. Everything listens on loopback; the Compose project
# (dockyard-bench) and the processes are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
DOCKER=${DOCKER:-/usr/bin/docker}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
env_file=()
[[ -n ${ENV_FILE:-} ]] && env_file=(--env-file "$ENV_FILE")
compose() {
  TAG=bench GATEWAY_PUBLISH=127.0.0.1:18580 ADMIN_PUBLISH=127.0.0.1:18581 \
    CONSOLE_PUBLISH=127.0.0.1:18582 GATEWAY_RATE_LIMIT_PER_SEC=1000000 \
    GATEWAY_RATE_LIMIT_BURST=1000000 "$DOCKER" compose -p dockyard-bench "${env_file[@]}" "$@"
}
up_pid=
cleanup() {
  compose down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  [[ -n $up_pid ]] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
}
trap cleanup EXIT

# One wrk pass against a product read at $2: "label req/s p99 errors".
measure() {
  local out
  out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
  awk -v label="$1" '/Requests\/sec/ {rps = $2} $1 == "99%" {p99 = $2}
    /Non-2xx or 3xx responses:/ {errors += $NF}
    /Socket errors:/ {gsub(/,/, ""); errors += $4 + $6 + $8 + $10}
    END {printf "%-44s %10s %10s %7d\n", label, rps, p99, errors + 0}' <<<"$out"
}
product() { curl -sf "$1/api/catalog/products?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])'; }

cargo xtask token >/dev/null
compose build --quiet catalog order gateway console
compose up -d --wait --wait-timeout 180 >/dev/null
gateway_ip=$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
  "$(compose ps -q gateway)")
published=http://127.0.0.1:18580
direct=http://$gateway_ip:8080
id=$(product "$published")
results=$(mktemp)
echo "wrk -t2 -c$CONNECTIONS -d$DURATION, GET /api/catalog/products/{id}, $ROUNDS rounds, $(nproc) cores, $(date -u +%FT%TZ)"
printf '%-44s %10s %10s %7s\n' target req/s p99 errors
wrk -t2 -c"$CONNECTIONS" -d2s "$published/api/catalog/products/$id" >/dev/null # warm-up
for _ in $(seq "$ROUNDS"); do
  measure "containers, published port (userland proxy)" "$published/api/catalog/products/$id" | tee -a "$results"
  measure "containers, the gateway container's address" "$direct/api/catalog/products/$id" | tee -a "$results"
done
compose down --volumes --remove-orphans --timeout 30 >/dev/null

cargo build --release -q -p catalog -p order -p gateway -p console
cargo run --release -q -p xtask -- up --release --port 18590 --admin-port 18591 --console-port 18592 \
  >/dev/null 2>&1 &
up_pid=$!
for _ in $(seq 120); do curl -sf http://127.0.0.1:18590/api/catalog/products?limit=1 >/dev/null && break; sleep 1; done
id=$(product http://127.0.0.1:18590)
wrk -t2 -c"$CONNECTIONS" -d2s "http://127.0.0.1:18590/api/catalog/products/$id" >/dev/null
for _ in $(seq "$ROUNDS"); do
  measure "processes (cargo xtask up --release)" "http://127.0.0.1:18590/api/catalog/products/$id" | tee -a "$results"
done
if awk '$NF != 0 {bad = 1} END {exit !bad}' "$results"; then
  echo "INVALID RUN: errors (see the errors column)"
  exit 1
fi
