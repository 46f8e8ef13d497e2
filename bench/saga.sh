#!/usr/bin/env bash
# The order saga's benchmark: catalog ×2, order ×1 and the gateway (release builds) on a
# platform of their own, driven at saturation, at 80 % and at 2× of the measured capacity.
# Prints orders/s, placement→confirmed p50/p99 (from the orders table), the 503s of admission
# control, and the invariants. Needs PostgreSQL and RabbitMQ (DATABASE_URL, AMQP_URL).
#
#   bash bench/saga.sh                    # 60 s per pass, 64 clients at saturation
#   SECONDS_PER_PASS=20 bash bench/saga.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_PASS=${SECONDS_PER_PASS:-60}
CONCURRENCY=${CONCURRENCY:-64}

cargo build --release -q -p catalog -p order -p gateway
# The load generator is built in release mode too: a debug build took a fifth of the two
# cores the platform under test needs (perf, 2026-11-25).
cargo run --release -q -p xtask -- saga-bench --release --seconds "$SECONDS_PER_PASS" --concurrency "$CONCURRENCY" "$@"
