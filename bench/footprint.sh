#!/usr/bin/env bash
# What each service costs while it waits and how fast it starts (issue 30): release builds on a
# platform of their own with RUST_LOG=warn; per service, start-to-ready of five restarts, idle
# RSS, and RSS after a load of 20,000 requests and 10 s of idle. Targets: idle RSS <= 20 MB,
# every start <= 50 ms, RSS after the load and the idle <= 1.5x idle. Needs PostgreSQL and
# RabbitMQ (DATABASE_URL, AMQP_URL). Exits 1 when a target is missed.
#
#   bash bench/footprint.sh
#   bash bench/footprint.sh --bin-dir /tmp/before    # another build, for an A/B
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p catalog -p order -p gateway -p xtask
target/release/xtask footprint "$@"
